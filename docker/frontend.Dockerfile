# FastAPI + Gradio frontend (k8s: qwen3-vl-platform/frontend:0.1.0): the frontend extra of
# pyproject.toml only, no torch. Build context: made by `python -m stack.docker images`,
# with the wheelhouse at var/wheelhouse/frontend/ (wheels + requirements.txt).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
COPY var/wheelhouse/frontend /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
        -r /tmp/wheelhouse/requirements.txt
# Marks this stage's image, the dependency cache, so stack.docker can drop stale ones.
LABEL io.qwen3-vl-platform.build-stage=frontend

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="qwen3-vl-platform frontend" \
      org.opencontainers.image.description="OpenAI-compatible API and Gradio chat UI in front of Triton's qwen3_vl model" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/qwen3-vl-platform/qwen3-vl-platform"

RUN if ! getent passwd 1000 >/dev/null; then \
        groupadd --gid 1000 platform \
     && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin platform; \
    fi
COPY --from=build /opt/venv /opt/venv
# The project's own code last: a change to it rebuilds only these small layers.
COPY pyproject.toml /tmp/src/pyproject.toml
COPY wire_contract /tmp/src/wire_contract
COPY frontend /tmp/src/frontend
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --no-build-isolation /tmp/src \
 && rm -rf /tmp/src

ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    FRONTEND_TRITON_GRPC_URL=dns:///triton:8001

USER 1000:1000
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# The same command as k8s/base/deployment-frontend.yaml.
CMD ["uvicorn", "--factory", "frontend.app:create_app", "--host", "0.0.0.0", "--port", "8080", \
     "--timeout-graceful-shutdown", "120"]
