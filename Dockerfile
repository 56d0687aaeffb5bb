# syntax=docker/dockerfile:1
# The jobpool image: `jobpool operator` (the Helm chart's Deployment) and `jobpool worker`
# (the pods of every JobPool) — the entrypoint is the `jobpool` command, so the
# command's first argument picks the role. Build your worker image on top of this one
# with your handlers (see the README, "Install on Kubernetes with Helm").
#
#   docker build -t jobpool:0.1.0 .
#
# The base is pinned to an exact Python and Debian release; pin it further by digest
# with --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/jobpool
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jobpool ./jobpool
# pip stays in the venv: worker images install their own dependencies with it.
RUN /opt/jobpool/bin/pip install . \
    && /opt/jobpool/bin/python -m compileall -q /opt/jobpool/lib

FROM ${PYTHON_IMAGE}
# A fixed, unprivileged user (the uid the chart's and the operator's pods run as).
RUN groupadd --system --gid 65532 jobpool \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin jobpool
COPY --from=build /opt/jobpool /opt/jobpool
# Handlers are imported from the working directory (`--app module:registry`): the
# examples ship here, and a worker image adds its own package beside them.
WORKDIR /app
COPY examples ./examples
ENV PATH=/opt/jobpool/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 65532:65532
ENTRYPOINT ["jobpool"]
CMD ["--help"]
