# syntax=docker/dockerfile:1
# One image for every role of trailingstop (docs/DESIGN.md §2, §7):
#   trailingstop operator --standalone
#   trailingstop worker marketdata|orchestrator|executor ...
#   trailingstop run FILE.yaml            (embedded demo, no cluster)
#
#   docker build -t ghcr.io/trailingstop/trailingstop:0.1.0 .
#
# The builder stage turns the source into a wheel and installs it into a virtualenv; the final
# stage gets only that virtualenv (no compiler, no build tools, no source tree) and runs as the
# numeric non-root user 10001, the UID of the operator's and workers' pod specs.
# tests/e2e/test_install.py runs this file's builder RUN lines in a fresh virtualenv (with the
# ENV paths pointed at temporary directories) and checks the final stage's layout; keep the
# install steps in RUN lines that are plain shell.

# checkov:skip=CKV_DOCKER_2:Kubernetes probes /healthz on port 8080 (the chart's and the operator's pod specs); a HEALTHCHECK would only run under Docker.
FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    SRC=/src \
    WHEELS=/wheels \
    VENV=/opt/trailingstop
WORKDIR ${SRC}
# .dockerignore lets in only pyproject.toml, README.md, LICENSE and trailingstop/.
COPY . .
RUN python -m pip wheel --no-deps --wheel-dir "$WHEELS" "$SRC" \
 && python -m venv "$VENV" \
 && "$VENV/bin/python" -m pip install "$WHEELS"/trailingstop-*.whl \
 && "$VENV/bin/python" -m pip uninstall --yes pip \
 && "$VENV/bin/trailingstop" --version

FROM python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="trailingstop" \
      org.opencontainers.image.description="Crypto trailing stops as Kubernetes custom resources: operator and workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/trailingstop/trailingstop" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
ENV VENV=/opt/trailingstop \
    PATH=/opt/trailingstop/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRAILINGSTOP_HEALTH_PORT=8080
RUN groupadd --system --gid 10001 trailingstop \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin trailingstop
COPY --from=builder /opt/trailingstop /opt/trailingstop
WORKDIR /tmp
USER 10001:10001
# /healthz and /metrics (Kubernetes probes these: no HEALTHCHECK in the image)
EXPOSE 8080
ENTRYPOINT ["trailingstop"]
CMD ["--help"]
