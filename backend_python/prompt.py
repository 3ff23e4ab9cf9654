"""Turning a validated request into model inputs with the checkpoint's own processor and chat template."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from .config import EngineConfig
from .errors import LimitExceeded
from .media import decode_image
from .request import GenerationRequest


@dataclass(frozen=True)
class ImageSpan:
    """Where one image's tokens lie in the prompt, its rows of ``pixel_values``, and what it is: the
    prefix cache keys blocks by ``digest`` too, since every image's placeholder tokens are the same."""

    start: int
    end: int
    pixel_start: int
    pixel_end: int
    digest: bytes


@dataclass
class Prompt:
    """One tokenized prompt, on the CPU, ready for the engine to collate."""

    input_ids: torch.Tensor  # (L,)
    mm_token_type_ids: torch.Tensor  # (L,)
    pixel_values: torch.Tensor | None  # (patches, C*T*P*P)
    image_grid_thw: torch.Tensor | None  # (images, 3)
    positions: torch.Tensor | None = None  # (3, L) rotary positions (3-D for image tokens)
    images: tuple[ImageSpan, ...] = ()

    @functools.cached_property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @functools.cached_property
    def next_position(self) -> int:
        """The rotary position of the first answer token (answer tokens advance all three axes by one);
        read by every decode step, so computed once (after ``positions`` is set)."""
        return int(self.positions.max()) + 1


class PromptBuilder:
    def __init__(self, processor: Any, config: EngineConfig, pixel_dtype: torch.dtype | None = None,
                 rope_index: Callable | None = None):
        """``pixel_dtype``: the vision encoder's, to which the engine would cast the pixels anyway (here,
        on this thread pool, with half the bytes left for the engine to copy). The pixels are not
        page-locked here: that is a CUDA call, and one from another thread while the engine captures
        a graph breaks the capture. ``rope_index``: the model's ``get_rope_index``; a prompt's rotary
        positions are a function of the prompt alone, so they are computed here, off the engine thread."""
        self._processor = processor
        self._rope_index = rope_index
        self._image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self._merge = processor.image_processor.merge_size
        self._pixel_dtype = pixel_dtype
        self._pool = ThreadPoolExecutor(config.prompt_workers, thread_name_prefix="qwen3vl-prompt")
        self._limits = config.limits
        self._images_kwargs: dict[str, Any] = {}
        if config.image_min_pixels or config.image_max_pixels:
            size = dict(processor.image_processor.size)
            if config.image_min_pixels:
                size["shortest_edge"] = config.image_min_pixels
            if config.image_max_pixels:
                size["longest_edge"] = config.image_max_pixels
            self._images_kwargs["size"] = size

    def build_many(self, requests: Sequence[GenerationRequest]) -> Iterator[Prompt | Exception]:
        """Each request's prompt (or the error that refused it), in order, built on several threads.

        Decoding and resizing images release the GIL: on an H100 host, 64 image prompts took
        0.66 s one after the other and 0.27 s on four threads, and a burst's first tokens wait for them.
        """
        futures = [self._pool.submit(self.build, request) for request in requests]
        for future in futures:
            try:
                yield future.result()
            except Exception as exc:
                yield exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def build(self, request: GenerationRequest) -> Prompt:
        images = [decode_image(data, self._limits, i) for i, data in enumerate(request.images)]
        # The chat template sees image placeholders in the order the parts name them.
        ordered = []
        messages = []
        for message in request.messages:
            parts = []
            for part in message.content:
                if part["type"] == "image":
                    ordered.append(images[part["image"]])
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            messages.append({"role": message.role, "content": parts})
        text = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self._processor(
            text=[text], images=ordered or None, return_tensors="pt", **self._images_kwargs
        )
        length = int(inputs["input_ids"].shape[1])
        if length > self._limits.max_prompt_tokens:
            raise LimitExceeded(
                f"invalid request: the prompt has {length} tokens (images included), "
                f"at most {self._limits.max_prompt_tokens}"
            )
        pixels = inputs.get("pixel_values")
        if pixels is not None and self._pixel_dtype is not None:
            pixels = pixels.to(self._pixel_dtype)
        ids, kinds, grid = inputs["input_ids"][0], inputs["mm_token_type_ids"][0], inputs.get("image_grid_thw")
        positions = None
        if self._rope_index is not None:
            positions = self._rope_index(ids[None], kinds[None], grid)[0][:, 0]
        order = [request.images[p["image"]] for m in request.messages for p in m.content if p["type"] == "image"]
        return Prompt(input_ids=ids, mm_token_type_ids=kinds, pixel_values=pixels, image_grid_thw=grid,
                      positions=positions, images=self._spans(ids, grid, order))

    def _spans(self, ids: torch.Tensor, grid: torch.Tensor | None, images: list[bytes]) -> tuple[ImageSpan, ...]:
        """Each image's run of placeholder tokens, in order: as many as its merged patches."""
        if grid is None:
            return ()
        starts = ((ids == self._image_token).int().diff(prepend=torch.zeros(1, dtype=torch.int32)) == 1)
        starts = starts.nonzero().flatten().tolist()
        patches = grid.prod(dim=1).tolist()
        spans, pixel = [], 0
        for start, count, data in zip(starts, patches, images):
            tokens = count // self._merge ** 2
            spans.append(ImageSpan(start, start + tokens, pixel, pixel + count,
                                   hashlib.blake2b(data, digest_size=16).digest()))
            pixel += count
        return tuple(spans)
