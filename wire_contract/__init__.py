"""The wire contract of the Triton model ``qwen3_vl``: tensor names and types, finish reasons, defaults.

The model (backend_python), the frontend and clients/ all import this module, so a name is spelled
once; docs/contracts.md explains each tensor, and a unit test holds config.pbtxt to the tables here.
It imports numpy and the standard library only: it ships in the slim frontend image as well as the
Triton image. The one conversion of a request to tensors (``WireRequest.to_arrays``) and of a
response to and from tensors (``WireResponse``) lives here; every array carries the batch
dimension of 1 that Triton's batching model expects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

MODEL_NAME = "qwen3_vl"

FinishReason = Literal["stop", "length", "cancelled"]
FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)
FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = FINISH_REASONS

# What the model assumes for an optional input left out of a request.
# (``max_tokens`` has no wire default: it is the model's ``default_max_tokens`` parameter.)
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 1.0
DEFAULT_STREAM = True
DEFAULT_IGNORE_EOS = False
MAX_TEMPERATURE = 2.0

_NUMPY_TYPES: dict[str, Any] = {
    "BYTES": np.object_, "BOOL": np.bool_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output; ``dims`` leave out the batch dimension, as config.pbtxt does."""

    name: str
    datatype: str  # the KServe v2 name tritonclient uses: BYTES, BOOL, INT32, INT64, FP32
    dims: tuple[int, ...] = (1,)
    optional: bool = False

    @property
    def config_type(self) -> str:
        """The spelling in config.pbtxt (``TYPE_STRING`` for bytes)."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"

    def array(self, values: Sequence[Any]) -> np.ndarray:
        """``values`` as one request's tensor: shape [1, len(values)]."""
        return np.array([list(values)], dtype=_NUMPY_TYPES[self.datatype])


INPUTS: dict[str, TensorSpec] = {spec.name: spec for spec in (
    TensorSpec("messages", "BYTES"),
    TensorSpec("images", "BYTES", (-1,), optional=True),
    TensorSpec("videos", "BYTES", (-1,), optional=True),
    TensorSpec("max_tokens", "INT32", optional=True),
    TensorSpec("temperature", "FP32", optional=True),
    TensorSpec("top_p", "FP32", optional=True),
    TensorSpec("seed", "INT64", optional=True),
    TensorSpec("stop", "BYTES", (-1,), optional=True),
    TensorSpec("stream", "BOOL", optional=True),
    TensorSpec("ignore_eos", "BOOL", optional=True),
)}

OUTPUTS: dict[str, TensorSpec] = {spec.name: spec for spec in (
    TensorSpec("text_output", "BYTES"),
    TensorSpec("finish_reason", "BYTES"),
    TensorSpec("prompt_tokens", "INT32"),
    TensorSpec("completion_tokens", "INT32"),
    TensorSpec("visual_tokens", "INT32"),
)}


@dataclass(frozen=True)
class WireRequest:
    """One generation as the model receives it; ``None`` leaves an input out (the model's default applies).

    ``messages`` are chat turns in the model's JSON shape: ``content`` is a string or a list of
    ``{"type": "text", "text": ...}``, ``{"type": "image", "image": <index into images>}`` and
    ``{"type": "video", "video": <index into videos>}`` parts.
    """

    messages: Sequence[Mapping[str, Any]]
    images: Sequence[bytes] = ()
    videos: Sequence[bytes] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    stream: bool = DEFAULT_STREAM
    ignore_eos: bool = DEFAULT_IGNORE_EOS

    def to_arrays(self) -> dict[str, np.ndarray]:
        values: dict[str, Sequence[Any]] = {
            "messages": [json.dumps(list(self.messages), ensure_ascii=False).encode("utf-8")],
            "images": [bytes(image) for image in self.images],
            "videos": [bytes(video) for video in self.videos],
            "max_tokens": [] if self.max_tokens is None else [self.max_tokens],
            "temperature": [] if self.temperature is None else [self.temperature],
            "top_p": [] if self.top_p is None else [self.top_p],
            "seed": [] if self.seed is None else [self.seed],
            "stop": [s.encode("utf-8") for s in self.stop],
            "stream": [self.stream],
            "ignore_eos": [True] if self.ignore_eos else [],
        }
        return {name: INPUTS[name].array(v) for name, v in values.items() if v}


# The outputs of a stream's responses between its first and its last, which carry every output: the
# others do not change in between. Each output is a tensor the model's interpreter builds and Triton
# copies, per response, on the path that competes with the engine for that interpreter.
DELTA_OUTPUTS = ("text_output", "completion_tokens")


@dataclass(frozen=True)
class WireResponse:
    """One response of a stream; ``finish_reason`` is empty until the last one. The responses between
    the first and the last carry no ``prompt_tokens`` and ``visual_tokens``: they read as 0."""

    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    visual_tokens: int = 0  # of the prompt tokens, those standing for images and video frames

    def to_arrays(self, full: bool = True) -> dict[str, np.ndarray]:
        """The model's side: every output, or ``DELTA_OUTPUTS`` only (a stream's responses between its
        first and its last). Without the batch dimension: Triton adds it to a decoupled response."""
        values = {"text_output": [self.text.encode("utf-8")], "finish_reason": [self.finish_reason.encode("utf-8")],
                  "prompt_tokens": [self.prompt_tokens], "completion_tokens": [self.completion_tokens],
                  "visual_tokens": [self.visual_tokens]}
        return {name: OUTPUTS[name].array(values[name])[0] for name in (OUTPUTS if full else DELTA_OUTPUTS)}

    @classmethod
    def from_arrays(cls, as_numpy: Callable[[str], np.ndarray | None]) -> WireResponse:
        """The clients' side: ``as_numpy`` is tritonclient's ``InferResult.as_numpy``; a missing output reads as empty."""

        def first(name: str) -> Any:
            array = as_numpy(name)
            return None if array is None or array.size == 0 else array.reshape(-1)[0]

        text, reason = first("text_output"), first("finish_reason")
        prompt, completion, visual = first("prompt_tokens"), first("completion_tokens"), first("visual_tokens")
        return cls(
            text=_decode(text),
            finish_reason=_decode(reason),
            prompt_tokens=0 if prompt is None else int(prompt),
            completion_tokens=0 if completion is None else int(completion),
            visual_tokens=0 if visual is None else int(visual),
        )


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)
