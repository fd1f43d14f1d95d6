# syntax=docker/dockerfile:1
#
# keda-interceptor as a drop-in image for the KEDA HTTP add-on's interceptor
# (chart keda-add-ons-http v0.16): same ports, probes and arguments, runs as
# a numeric non-root user on a read-only root filesystem. See docs/deploy.md.
#
#   docker build -t REGISTRY/keda-interceptor:0.16.0 .
#
# The install steps live in deploy/image.sh, which tests/test_image_install.py
# runs too (there is no container engine in CI).

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: the wheels, then a venv holding them --------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# the build context is only what .dockerignore lets through: the package
# sources, their metadata, the pins and deploy/image.sh
COPY . .
# keda-interceptor's wheel (`pip wheel .`: non-editable) and every
# dependency's, at the versions the suite passes with (requirements-pins.txt)
RUN sh deploy/image.sh wheels /src /wheels \
 && sh deploy/image.sh install /wheels /opt/keda-interceptor

# -- the image ----------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# nothing may be written at run time (the chart sets readOnlyRootFilesystem):
# no bytecode, no pid file (--pidfile= below), no plugin cache (built here)
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/keda-interceptor/bin:$PATH
COPY --from=builder /opt/keda-interceptor /opt/keda-interceptor
# Bytecode for the standard library (the base image may ship none) and for
# the venv, then Twisted's plugin caches. These run here, not in the builder,
# so that the caches are written after the COPY above, whatever file times it
# kept. The user: 65532, as the Go image (distroless "nonroot"), numeric so
# that runAsNonRoot can check it.
RUN --mount=type=bind,from=builder,source=/src/deploy/image.sh,target=/tmp/image.sh \
    python -m compileall -q -j 0 \
        -x '/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)/' \
        "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
 && sh /tmp/image.sh finish /opt/keda-interceptor \
 && useradd --system --uid 65532 --user-group --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /
# proxy, admin (probes, /queue), Prometheus metrics, TLS proxy (when enabled)
EXPOSE 8080 9090 2223 8443
# the chart's `args` (--zap-*) are appended to this; -r keda-epoll is the
# interceptor's tuned epoll reactor (docs/performance.md: about 1.25x the
# requests per core of twistd's default one)
ENTRYPOINT ["/opt/keda-interceptor/bin/twistd", "-n", "--pidfile=", "-r", "keda-epoll", "keda-interceptor"]
