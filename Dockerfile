# One image for every role of trailingstop (docs/DESIGN.md §2, §7):
#   trailingstop operator --standalone
#   trailingstop worker marketdata|orchestrator|executor ...
#   trailingstop run FILE.yaml            (embedded demo, no cluster)
#
#   docker build -t ghcr.io/trailingstop/trailingstop:0.1.0 .
#
# The builder stage installs the dependencies into a virtualenv (a layer of their own, from
# pyproject.toml alone, so a change to the code rebuilds only the last steps), then the package
# as a wheel; the final stage gets only that virtualenv (no compiler, no build tools, no source
# tree) and runs as the numeric non-root user 10001, the UID of the operator's and workers' pod specs.
#
# Build arguments:
#   PYTHON_IMAGE  the base of both stages (default: the official Python 3.11 slim image). Where
#                 Docker Hub is out of reach, any Debian 12 image with python, pip and venv does:
#                 `scripts/testenv images` builds one from Debian's packages.
#   VERSION, REVISION, CREATED   the OCI labels.
# A CA bundle for pip (a TLS-inspecting proxy) can be given as a BuildKit secret; it is mounted
# only while pip runs and never stored in a layer:
#   DOCKER_BUILDKIT=1 docker build --secret id=pipcert,src=/etc/ssl/certs/ca-certificates.crt .
# (No `# syntax=` line: the engine's built-in Dockerfile frontend is used, nothing is pulled.)
#
# tests/e2e/test_install.py runs this file's builder RUN lines in a fresh virtualenv (with the
# ENV paths pointed at temporary directories) and checks the final stage's layout; keep the
# install steps in RUN lines that are plain shell.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# checkov:skip=CKV_DOCKER_2:Kubernetes probes /healthz on port 8080 (the chart's and the operator's pod specs); a HEALTHCHECK would only run under Docker.
# checkov:skip=CKV_DOCKER_7:The base is the PYTHON_IMAGE build argument, whose default is the pinned python:3.11.14-slim-bookworm.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    SRC=/src \
    WHEELS=/wheels \
    VENV=/opt/trailingstop
WORKDIR ${SRC}
# .dockerignore lets in only pyproject.toml, README.md, LICENSE and trailingstop/.
COPY pyproject.toml ./
# The dependencies, as pyproject.toml pins them (the same list pip would resolve for the wheel).
# pip's cache is a BuildKit cache mount: it speeds up rebuilds and is in no layer.
RUN --mount=type=secret,id=pipcert --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && mkdir -p "$WHEELS" \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > "$WHEELS/requirements.txt" \
 && python -m venv "$VENV" \
 && "$VENV/bin/python" -m pip install --requirement "$WHEELS/requirements.txt"
COPY README.md ./
COPY trailingstop/ trailingstop/
RUN --mount=type=secret,id=pipcert --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python -m pip wheel --no-deps --wheel-dir "$WHEELS" "$SRC" \
 && "$VENV/bin/python" -m pip install --no-deps "$WHEELS"/trailingstop-*.whl \
 && "$VENV/bin/python" -m pip check \
 && "$VENV/bin/python" -m pip uninstall --yes pip setuptools \
 && "$VENV/bin/trailingstop" --version

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
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
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
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
