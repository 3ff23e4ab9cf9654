"""How a prompt crosses the engine process's pipe: its tensors as bytes, its pixels sent once.

Tensors travel as numpy arrays pickled inline (torch's own reduction would move each into shared
memory, under the feet of the threads reading the processor cache). An image's or a video's pixel
rows are megabytes (a 448x448 image: 2.4 MB in bfloat16), and a chat sends its images again every
turn, a burst often the same one: so both sides keep the rows of recent images and videos by the
digest of their bytes, the engine process the rows themselves, the model's process only their sizes,
updated in the same order (the pipe's) under the same budget. The sender therefore knows what the
engine process holds, and sends that as a reference (vLLM mirrors its processor cache between its
front end and its engine core the same way). Should the sender fail mid-way, or the receiver miss a
reference (a bug), the sender starts a new generation of the mirror, and the receiver empties its side
when it sees the new number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Hashable

import numpy as np
import torch

from .errors import EngineFailure
from .prompt import Prompt
from .visual_cache import VisualCache

_PLAIN = ("input_ids", "mm_token_type_ids", "image_grid_thw", "positions", "video_grid_thw")
_ROWS = {"pixel_values": False, "pixel_values_videos": True}  # field: rows of videos

Packed = tuple[np.ndarray, torch.dtype, tuple[int, ...]]


class PixelsMissing(EngineFailure):
    """The engine process lacks pixels the model's process believes it holds: the two sides disagree (a
    bug). The prompt fails as an internal error, and the sender starts the mirror over."""


@dataclasses.dataclass(frozen=True)
class _Size:
    nbytes: int


class PixelMirror:
    """One side of the mirror: ``pack`` in the model's process, ``unpack`` in the engine process.
    ``budget_bytes``: the processor cache's (0: every prompt sends its pixels)."""

    def __init__(self, budget_bytes: int):
        self._budget = budget_bytes
        self._cache: VisualCache = VisualCache(budget_bytes)
        self.generation = 0

    def reset(self) -> None:
        """Empty this side: a new engine process, a send that failed mid-way, or the other side missed."""
        self._cache = VisualCache(self._budget)
        self.generation += 1

    def pack(self, prompt: Prompt) -> Prompt:
        """The prompt as it crosses the pipe. Call in the order the prompts are sent, one at a time."""
        return dataclasses.replace(prompt, **{name: _array(getattr(prompt, name)) for name in _PLAIN},
                                   **{name: self._pack_rows(prompt, video) for name, video in _ROWS.items()})

    def unpack(self, packed: Prompt, generation: int) -> Prompt:
        """The prompt a ``pack`` of the other side's ``generation`` made, in the order they were sent."""
        if generation != self.generation:
            self._cache = VisualCache(self._budget)
            self.generation = generation
        return dataclasses.replace(packed, **{name: _tensor(getattr(packed, name)) for name in _PLAIN},
                                   **{name: self._unpack_rows(getattr(packed, name)) for name in _ROWS})

    def _pack_rows(self, prompt: Prompt, video: bool) -> list[tuple] | None:
        rows = prompt.pixel_values_videos if video else prompt.pixel_values
        if rows is None:
            return None
        parts = []
        for key, start, end in _units(prompt, video):
            if key is not None and self._cache.get(key) is not None:
                parts.append(("held", key))
                continue
            piece = rows[start:end]
            if key is not None:
                self._cache.put(key, _Size(piece.numel() * piece.element_size()))
            parts.append(("rows", key, _array(piece)))
        return parts

    def _unpack_rows(self, parts: list[tuple] | None) -> torch.Tensor | None:
        if parts is None:
            return None
        pieces = []
        for part in parts:
            if part[0] == "held":
                piece = self._cache.get(part[1])
                if piece is None:
                    raise PixelsMissing("internal error: the engine process lacks an image the model's process "
                                        "sent before")
            else:
                _, key, rows = part
                piece = _tensor(rows)
                if key is not None:
                    self._cache.put(key, piece)
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def __len__(self) -> int:
        return len(self._cache)


def _units(prompt: Prompt, video: bool) -> Iterator[tuple[Hashable | None, int, int]]:
    """Each image's (or video's) key and rows in the prompt's pixel rows, in order. A video has a span
    per temporal patch; its first starts where the video's rows do."""
    grid = prompt.video_grid_thw if video else prompt.image_grid_thw
    digests = {span.pixel_start: span.digest for span in prompt.visuals if span.video == video}
    start = 0
    for t, h, w in grid.tolist():
        end = start + t * h * w
        digest = digests.get(start)
        yield (None if digest is None else ("video" if video else "image", digest)), start, end
        start = end


def _array(tensor: torch.Tensor | None) -> Packed | None:
    """Its bytes (numpy has no bfloat16), dtype and shape."""
    if tensor is None:
        return None
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy(), tensor.dtype, tuple(tensor.shape)


def _tensor(packed: Packed | None) -> torch.Tensor | None:
    if packed is None:
        return None
    data, dtype, shape = packed
    return torch.from_numpy(data).view(dtype).reshape(shape)
