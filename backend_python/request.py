"""The request and response contract of the ``qwen3_vl`` model, and its one conversion to and from tensors.

Tensor names, types, finish reasons and defaults come from ``wire_contract`` (the
module clients build requests with); docs/contracts.md explains them. ``from_tensors``
is the single place where client input is validated; everything downstream may
trust a ``GenerationRequest``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from wire_contract import (
    DEFAULT_IGNORE_EOS,
    DEFAULT_STREAM,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_TEMPERATURE,
    WireResponse,
)
from wire_contract.text_budget import over_budget

from .config import Limits
from .errors import InvalidRequest, LimitExceeded

ROLES = ("system", "user", "assistant")
MEDIA = {"image": "images", "video": "videos"}  # a part's type -> the tensor its index points into


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ChatMessage:
    role: str
    # Parts are {"type": "text", "text": str}, {"type": "image", "image": int} or {"type": "video", "video": int}.
    content: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    images: tuple[bytes, ...]
    sampling: SamplingParams
    videos: tuple[bytes, ...] = ()
    stream: bool = True
    request_id: str = ""

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, np.ndarray | None], limits: Limits, request_id: str = ""
    ) -> "GenerationRequest":
        raw = _scalar(tensors, "messages")
        if raw is None:
            raise InvalidRequest("invalid request: the input 'messages' is required")
        images = tuple(bytes(b) for b in _flat(tensors.get("images")))
        videos = tuple(bytes(b) for b in _flat(tensors.get("videos")))
        messages = parse_messages(raw, {"image": len(images), "video": len(videos)}, limits)
        # Before any tokenizer runs: a text that cannot fit costs a sum of lengths, not a tokenization.
        oversized = over_budget((p["text"] for m in messages for p in m.content if p["type"] == "text"),
                                limits.max_prompt_tokens)
        if oversized:
            raise LimitExceeded(f"invalid request: {oversized}")
        if len(images) > limits.max_images:
            raise LimitExceeded(
                f"invalid request: {len(images)} images, at most {limits.max_images} per request"
            )
        if len(videos) > limits.max_videos:
            raise LimitExceeded(f"invalid request: {len(videos)} videos, at most {limits.max_videos} per request")
        max_tokens = _scalar(tensors, "max_tokens")
        max_tokens = limits.default_max_tokens if max_tokens is None else int(max_tokens)
        if not 1 <= max_tokens <= limits.max_new_tokens:
            raise InvalidRequest(
                f"invalid request: max_tokens must be between 1 and {limits.max_new_tokens}, got {max_tokens}"
            )
        temperature = _float(tensors, "temperature", DEFAULT_TEMPERATURE)
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise InvalidRequest(f"invalid request: temperature must be in [0, {MAX_TEMPERATURE:g}], got {temperature}")
        top_p = _float(tensors, "top_p", DEFAULT_TOP_P)
        if not 0.0 < top_p <= 1.0:
            raise InvalidRequest(f"invalid request: top_p must be in (0, 1], got {top_p}")
        seed = _scalar(tensors, "seed")
        stop = tuple(_text(s, "stop") for s in _flat(tensors.get("stop")))
        if len(stop) > limits.max_stop_strings:
            raise InvalidRequest(
                f"invalid request: {len(stop)} stop strings, at most {limits.max_stop_strings}"
            )
        if any(not s for s in stop):
            raise InvalidRequest("invalid request: stop strings must not be empty")
        stream = _scalar(tensors, "stream")
        ignore_eos = _scalar(tensors, "ignore_eos")
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=None if seed is None else int(seed),
            stop=stop,
            ignore_eos=DEFAULT_IGNORE_EOS if ignore_eos is None else bool(ignore_eos),
        )
        return cls(
            messages=messages,
            images=images,
            videos=videos,
            sampling=sampling,
            stream=DEFAULT_STREAM if stream is None else bool(stream),
            request_id=request_id,
        )


@dataclass
class GenerationChunk:
    """One response: a text delta (or the whole text), and the usage so far."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = ""
    token_ids: list[int] = field(default_factory=list)
    visual_tokens: int = 0  # of the prompt tokens, those standing for images and video frames

    def to_tensors(self, full: bool = True) -> dict[str, np.ndarray]:
        return WireResponse(self.text, self.finish_reason, self.prompt_tokens, self.completion_tokens,
                            self.visual_tokens).to_arrays(full)


def parse_messages(raw: Any, sent: Mapping[str, int], limits: Limits) -> tuple[ChatMessage, ...]:
    """Validate the chat turns; every image (video) part must name an image (video) that was sent, and
    every one sent must be named. ``sent``: how many of each kind came in their tensor."""
    try:
        data = json.loads(_text(raw, "messages"))
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid request: 'messages' is not valid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not data:
        raise InvalidRequest("invalid request: 'messages' must be a non-empty JSON list of turns")
    if len(data) > limits.max_messages:
        raise LimitExceeded(f"invalid request: {len(data)} messages, at most {limits.max_messages}")
    messages = []
    used: dict[str, set[int]] = {kind: set() for kind in MEDIA}
    for i, turn in enumerate(data):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise InvalidRequest(
                f"invalid request: messages[{i}] must be an object with a role in {list(ROLES)}"
            )
        content = turn.get("content")
        if isinstance(content, str):
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
        elif isinstance(content, list) and content:
            parts = [_parse_part(p, i, j, sent, used) for j, p in enumerate(content)]
        else:
            raise InvalidRequest(
                f"invalid request: messages[{i}].content must be a string or a non-empty list of parts"
            )
        if turn["role"] != "user" and any(p["type"] in MEDIA for p in parts):
            raise InvalidRequest(f"invalid request: messages[{i}]: only user turns may carry images and videos")
        messages.append(ChatMessage(role=turn["role"], content=tuple(parts)))
    if not any(m.role == "user" for m in messages):
        raise InvalidRequest("invalid request: the conversation has no user turn")
    if messages[-1].role == "assistant":
        raise InvalidRequest("invalid request: the last turn must be a user (or system) turn")
    for kind, tensor in MEDIA.items():
        unused = set(range(sent[kind])) - used[kind]
        if unused:
            raise InvalidRequest(
                f"invalid request: {tensor} {sorted(unused)} are sent but no message part refers to them"
            )
    return tuple(messages)


def _parse_part(part: Any, i: int, j: int, sent: Mapping[str, int], used: dict[str, set[int]]) -> dict[str, Any]:
    where = f"messages[{i}].content[{j}]"
    if not isinstance(part, dict):
        raise InvalidRequest(f"invalid request: {where} must be an object")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(f"invalid request: {where}.text must be a string")
        return {"type": "text", "text": part["text"]}
    if kind in MEDIA:
        index, count = part.get(kind), sent[kind]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise InvalidRequest(
                f"invalid request: {where}.{kind} must be an index into '{MEDIA[kind]}' (0..{count - 1})"
            )
        used[kind].add(index)
        return {"type": kind, kind: index}
    raise InvalidRequest(f"invalid request: {where}.type must be 'text', 'image' or 'video', got {kind!r}")


def _flat(array: np.ndarray | None) -> list[Any]:
    return [] if array is None else list(np.asarray(array).reshape(-1))


def _scalar(tensors: Mapping[str, np.ndarray | None], name: str) -> Any:
    values = _flat(tensors.get(name))
    if not values:
        return None
    if len(values) != 1:
        raise InvalidRequest(f"invalid request: '{name}' must hold exactly one value")
    value = values[0]
    return value.item() if isinstance(value, np.generic) else value


def _float(tensors: Mapping[str, np.ndarray | None], name: str, default: float) -> float:
    value = _scalar(tensors, name)
    if value is None:
        return default
    value = float(value)
    if not math.isfinite(value):
        raise InvalidRequest(f"invalid request: {name} must be a finite number")
    return value


def _text(value: Any, name: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"invalid request: '{name}' is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise InvalidRequest(f"invalid request: '{name}' must be text")
