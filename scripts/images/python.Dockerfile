# The stand-in for python:3.11-slim-bookworm where Docker Hub cannot be reached: Debian 12's own
# Python 3.11 on the debootstrap base that scripts/testenv makes (trailingstop.local/debian:bookworm-minbase).
# `python`, `python -m pip` and `python -m venv` work as in the official image.
#
#   scripts/testenv images      (builds it when missing, as trailingstop.local/python:3.11-bookworm)
ARG BASE=trailingstop.local/debian:bookworm-minbase
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
