"""Shared sample data for the backend tests: images made on the fly, requests built like clients build them."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def png(width: int = 64, height: int = 48, colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def tensors(messages, images=(), videos=(), **scalars) -> dict:
    out = {"messages": np.array([json.dumps(messages).encode()], dtype=np.object_)}
    if images:
        out["images"] = np.array(list(images), dtype=np.object_)
    if videos:
        out["videos"] = np.array(list(videos), dtype=np.object_)
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


class Sink:
    """Where the engine sends one sequence's responses in the tests (Triton's response sender in serving)."""

    def __init__(self, cancel_after: int | None = None):
        self.chunks, self.error, self.done = [], None, threading.Event()
        self.cancel_after = cancel_after

    def send(self, chunk, final):
        self.chunks.append(chunk)
        if final:
            self.done.set()

    def fail(self, error):
        self.error = error
        self.done.set()

    def is_cancelled(self):
        return self.cancel_after is not None and len(self.chunks) >= self.cancel_after

    def busy(self):
        return False

    @property
    def text(self):
        return "".join(c.text for c in self.chunks)


def run(engine, prompts, requests, sinks=None, timeout: float = 120):
    """Hand ``requests`` to the engine one after the other and wait for every answer."""
    sinks = sinks or [Sink() for _ in requests]
    for r, s in zip(requests, sinks):
        engine.submit(r, prompts.build(r), s)
    for s in sinks:
        assert s.done.wait(timeout), "no final response"
    assert all(s.error is None for s in sinks), [s.error for s in sinks]
    return sinks


def generate(model, prompt, max_tokens: int) -> str:
    """What transformers' own greedy ``generate`` answers to ``prompt``: the reference every engine matches."""
    inputs = dict(input_ids=prompt.input_ids[None], attention_mask=torch.ones_like(prompt.input_ids)[None],
                  mm_token_type_ids=prompt.mm_token_type_ids[None])
    if prompt.pixel_values is not None:
        inputs.update(pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw)
    if prompt.pixel_values_videos is not None:
        inputs.update(pixel_values_videos=prompt.pixel_values_videos, video_grid_thw=prompt.video_grid_thw)
    out = model.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return model.processor.decode(out[0, prompt.length:], skip_special_tokens=True)
