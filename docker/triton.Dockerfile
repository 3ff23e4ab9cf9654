# Triton Inference Server with the qwen3_vl Python-backend model (k8s: qwen3-vl-platform/triton:0.1.0).
#
# Build context: made by `python -m stack.docker images` (docker/README.md), which puts
# the wheelhouse at var/wheelhouse/triton/ (wheels + requirements.txt from pyproject.toml;
# var/wheelhouse/triton-py3.10/ for the NGC base, passed as WHEELHOUSE).
# No package index is needed inside the build.
#
# TRITON_SERVER=ngc (default): the server that comes with BASE_IMAGE, NGC 24.10 = Triton 2.51.
# TRITON_SERVER=pytriton: the same 2.51 server from the nvidia-pytriton wheel, for a plain
#   Debian/Ubuntu base with a shared libpython (what the tests build on, no registry needed).
# The wheelhouse must match BASE_IMAGE's Python (NGC 24.10: 3.10; Debian bookworm: 3.11).
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${BASE_IMAGE} AS build
ARG TRITON_SERVER=ngc
ARG WHEELHOUSE=var/wheelhouse/triton
COPY ${WHEELHOUSE} /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
        -r /tmp/wheelhouse/requirements.txt \
 && if [ "$TRITON_SERVER" = pytriton ]; then \
        /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --find-links /tmp/wheelhouse \
            -r /tmp/wheelhouse/server-requirements.txt; \
    fi
# Marks this stage's image, the dependency cache, so stack.docker can drop stale ones.
LABEL io.qwen3-vl-platform.build-stage=triton

FROM ${BASE_IMAGE}
ARG TRITON_SERVER=ngc
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="qwen3-vl-platform triton" \
      org.opencontainers.image.description="NVIDIA Triton serving Qwen3-VL through the Python backend (model qwen3_vl)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/qwen3-vl-platform/qwen3-vl-platform" \
      io.qwen3-vl-platform.triton-server="${TRITON_SERVER}"

# uid/gid 1000 as in k8s/base/deployment-triton.yaml (NGC images already have it: triton-server).
RUN if ! getent passwd 1000 >/dev/null; then \
        groupadd --gid 1000 platform \
     && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin platform; \
    fi \
 && mkdir -p /models /opt/platform \
 && chown 1000:1000 /models

COPY --from=build /opt/venv /opt/venv

# pytriton: put the wheel's Python backend (with the stub for this Python) where tritonserver
# looks by default, and a `tritonserver` on PATH that finds libpython and the wheel's libraries.
RUN if [ "$TRITON_SERVER" = pytriton ]; then \
        set -e; \
        site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
        libdir=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))'); \
        pyver=$(/opt/venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
        server="$site/pytriton/tritonserver"; \
        mkdir -p /opt/tritonserver/backends/python /opt/tritonserver/bin; \
        cp "$server/backends/python/libtriton_python.so" "$server/backends/python/triton_python_backend_utils.py" \
           "$server/python_backend_stubs/$pyver/triton_python_backend_stub" /opt/tritonserver/backends/python/; \
        chmod 755 /opt/tritonserver/backends/python/triton_python_backend_stub "$server/bin/tritonserver"; \
        printf '#!/bin/sh\nexport LD_LIBRARY_PATH="%s:%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\nexec %s "$@"\n' \
            "$libdir" "$site/nvidia_pytriton.libs" "$server/bin/tritonserver" > /opt/tritonserver/bin/tritonserver; \
        chmod 755 /opt/tritonserver/bin/tritonserver; \
    fi

# The project's own code last: a change to it rebuilds only these small layers.
COPY pyproject.toml /tmp/src/pyproject.toml
COPY wire_contract /tmp/src/wire_contract
COPY backend_python /tmp/src/backend_python
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --no-build-isolation /tmp/src \
 && rm -rf /tmp/src
COPY model_repository /opt/platform/model_repository

# The venv first on PATH: the backend stub finds its Python prefix (and torch) through it.
ENV PATH=/opt/venv/bin:/opt/tritonserver/bin:${PATH} \
    MODEL_PATH=/models/tiny \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1

USER 1000:1000
WORKDIR /tmp
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# k8s/base/deployment-triton.yaml gives its own arguments; these are the same defaults.
ENTRYPOINT []
CMD ["tritonserver", "--model-repository=/opt/platform/model_repository", \
     "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", \
     "--metrics-config=summary_latencies=true", "--exit-timeout-secs=120"]
