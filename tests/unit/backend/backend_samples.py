"""Shared sample data for the backend tests: images made on the fly, requests built like clients build them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def png(width: int = 64, height: int = 48, colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def tensors(messages, images=(), **scalars) -> dict:
    out = {"messages": np.array([json.dumps(messages).encode()], dtype=np.object_)}
    if images:
        out["images"] = np.array(list(images), dtype=np.object_)
    for name, value in scalars.items():
        if name == "stop":
            out[name] = np.array([s.encode() for s in value], dtype=np.object_)
        else:
            out[name] = np.array([value])
    return out


def user(text: str, n_images: int = 0) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": i} for i in range(n_images)]
             + [{"type": "text", "text": text}]}]


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def bomb() -> bytes:
    """20000 x 20000 pixels in a few kilobytes: a decompression bomb."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    return buf.getvalue()


def tiny_checkpoint() -> Path:
    """The small random-weight Qwen3-VL the tests run on, built on first use."""
    from backend_python.checkpoint import build

    path = Path(__file__).resolve().parents[3] / "var" / "checkpoints" / "tiny"
    if not (path / "config.json").exists():
        build(path)
    return path
