"""Helpers for the frontend integration tests: request bodies with real PNGs, and starting a frontend."""

import base64
import io

from PIL import Image

from stack.frontend import FrontendServer
from stack.ports import free_port

MODEL = "qwen3-vl"


def png_bytes(width: int = 64, height: int = 48, colour: str = "orange") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_question(text: str = "What is in this picture?", **fields) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
            {"type": "text", "text": text},
        ]}],
        "max_tokens": 12,
        **fields,
    }


# Small caps, so the limit tests need small payloads and generation stays short on CPU.
FRONTEND_ENV = {
    "FRONTEND_MAX_TOKENS_LIMIT": "64",
    "FRONTEND_DEFAULT_MAX_TOKENS": "16",
    "FRONTEND_MAX_IMAGES_PER_REQUEST": "8",
    "FRONTEND_MAX_BODY_BYTES": str(2 * 1024 * 1024),
    "FRONTEND_MAX_IMAGE_BYTES": str(1024 * 1024),
    "FRONTEND_MAX_IMAGE_PIXELS": str(1024 * 1024),
    "FRONTEND_MAX_VIDEO_BYTES": str(1024 * 1024),
    "FRONTEND_UNAVAILABLE_RETRY_S": "3",
    "FRONTEND_REQUEST_TIMEOUT_S": "120",
}


def start_frontend(triton, tmp_path_factory, name: str, **env: str) -> FrontendServer:
    log = tmp_path_factory.mktemp("frontend") / f"{name}.log"
    server = FrontendServer(
        port=free_port(),
        env={"FRONTEND_TRITON_GRPC_URL": triton.grpc_url, **FRONTEND_ENV, **env},
        log_file=str(log),
    )
    return server.start()
