"""Turning a validated request into model inputs with the checkpoint's own processor and chat template."""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from transformers.video_utils import VideoMetadata

from .config import EngineConfig
from .errors import InvalidRequest, LimitExceeded
from .media import VideoHeader, decode_image, decode_video, probe_video
from .metrics import EngineMetrics
from .request import GenerationRequest
from .visual_cache import VisualCache

IMAGE, VIDEO = 1, 2  # the processor's mm_token_type_ids


@dataclass(frozen=True)
class VisualSpan:
    """One run of an image's or a video's placeholder tokens in the prompt, the rows of ``pixel_values``
    (``pixel_values_videos`` for a video) it is encoded from, and the grid the encoder sees. A video is
    one span per temporal patch (two frames): its chat template puts a timestamp between them, and the
    encoder attends within a temporal patch only, so each is encoded when a prompt chunk reaches it.
    The prefix cache keys blocks by ``digest`` too, since every image's placeholder tokens are the same;
    the encoder cache keys features by ``key``."""

    start: int
    end: int
    pixel_start: int
    pixel_end: int
    digest: bytes
    grid: tuple[int, int, int]
    video: bool = False
    part: int = 0  # which temporal patch of its video

    @property
    def key(self) -> tuple:
        """What the encoder's output for this span depends on: the same image (temporal patch of a video)
        anywhere, in any request, is encoded to the same features."""
        return self.digest, self.video, self.part, self.grid


@dataclass(frozen=True)
class Processed:
    """What the processor makes of one image or video: its pixel rows, its grid (1, 3) and, for a video,
    the sampled frames' metadata, whose timestamps go into the prompt."""

    pixels: torch.Tensor
    grid: torch.Tensor
    metadata: VideoMetadata | None = None

    @property
    def patches(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def nbytes(self) -> int:
        return self.pixels.numel() * self.pixels.element_size()


@dataclass
class Prompt:
    """One tokenized prompt, on the CPU, ready for the engine to collate."""

    input_ids: torch.Tensor  # (L,)
    mm_token_type_ids: torch.Tensor  # (L,)
    pixel_values: torch.Tensor | None  # (patches, C*T*P*P)
    image_grid_thw: torch.Tensor | None  # (images, 3)
    positions: torch.Tensor  # (3, L) rotary positions (3-D for image and video tokens)
    visuals: tuple[VisualSpan, ...] = ()
    pixel_values_videos: torch.Tensor | None = None  # (patches, C*T*P*P)
    video_grid_thw: torch.Tensor | None = None  # (videos, 3)

    @functools.cached_property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @functools.cached_property
    def visual_tokens(self) -> int:
        """Read for every response a stream sends."""
        return sum(span.end - span.start for span in self.visuals)

    @property
    def video_tokens(self) -> int:
        return sum(span.end - span.start for span in self.visuals if span.video)

    @property
    def videos(self) -> int:
        return 0 if self.video_grid_thw is None else int(self.video_grid_thw.shape[0])

    def pixels(self, span: VisualSpan) -> torch.Tensor:
        rows = self.pixel_values_videos if span.video else self.pixel_values
        return rows[span.pixel_start:span.pixel_end]

    @functools.cached_property
    def next_position(self) -> int:
        """The rotary position of the first answer token (answer tokens advance all three axes by one);
        read by every decode step, so computed once (after ``positions`` is set)."""
        return int(self.positions.max()) + 1


class PromptBuilder:
    def __init__(self, processor: Any, config: EngineConfig, pixel_dtype: torch.dtype | None = None,
                 metrics: EngineMetrics | None = None):
        """``pixel_dtype``: the vision encoder's, to which the engine would cast the pixels anyway (here,
        on this thread pool, with half the bytes left for the engine to copy). The pixels are not
        page-locked here: that is a CUDA call, and one from another thread while the engine captures
        a graph breaks the capture."""
        self._processor = processor
        self._merge = processor.image_processor.merge_size
        self._modality_ids = {kind: torch.tensor([i for i in ids if i is not None], dtype=torch.long)
                              for kind, ids in ((IMAGE, processor.image_token_ids), (VIDEO, processor.video_token_ids))}
        self._pixel_dtype = pixel_dtype
        self._pool = ThreadPoolExecutor(config.prompt_workers, thread_name_prefix="qwen3vl-prompt")
        self._limits = config.limits
        self._cache: VisualCache[Processed] = VisualCache(config.processor_cache_bytes)
        self._metrics = metrics or EngineMetrics()
        self._image_size = _size(processor.image_processor.size, config.image_min_pixels, config.image_max_pixels)
        # The processor samples, sizes and time-stamps frames; sampling runs here, on the header's facts,
        # so that only the sampled frames are decoded. Its min/max frames are attributes, so a copy
        # holds this model's settings. Each frame's pixels are capped as Qwen's reference does.
        self._sampler = copy.copy(processor.video_processor)
        self._sampler.min_frames = config.video_min_frames or self._sampler.min_frames
        self._sampler.max_frames = config.video_max_frames or self._sampler.max_frames
        self._fps = config.video_fps or self._sampler.fps
        self._videos_kwargs = {
            "size": _size(processor.video_processor.size, config.video_min_pixels, config.video_max_pixels),
            "do_sample_frames": False, "cap_pixels_per_frame": True}
        # The reference layout of a video is "<t seconds><|vision_start|>frames<|vision_end|>" per temporal
        # patch: the processor expands a bare video token into that, so the chat template's own markers
        # around it are dropped (transformers 5.23 leaves them around the expansion; the processor
        # Qwen3-VL was released with replaced them with it, as vLLM does).
        self._video_token = processor.video_token
        self._video_part = processor.vision_start_token + processor.video_token + processor.vision_end_token

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
        keys = {"image": [("image", _digest(data)) for data in request.images],
                "video": [("video", _digest(data)) for data in request.videos]}
        done = {kind: [self._cache.get(key) for key in kind_keys] for kind, kind_keys in keys.items()}
        # What the cache lacks is decoded (images) or probed and sampled (videos), then checked
        # against the budget together with what it holds, before any video is decoded.
        images = {i: decode_image(data, self._limits, i) for i, data in enumerate(request.images)
                  if done["image"][i] is None}
        headers = {i: probe_video(data, self._limits, i) for i, data in enumerate(request.videos)
                   if done["video"][i] is None}
        sampled = {i: self._sample(header) for i, header in headers.items()}
        self._check_visual_budget(images, headers, sampled, [p for ps in done.values() for p in ps if p])
        for i, image in images.items():
            done["image"][i] = self._keep(keys["image"][i], self._processor.image_processor(
                images=[image], size=self._image_size, return_tensors="pt"), "pixel_values", "image_grid_thw")
        for i, header in headers.items():
            frames = decode_video(request.videos[i], header, sampled[i].frames_indices, i)
            done["video"][i] = self._keep(keys["video"][i], self._processor.video_processor(
                videos=[frames], video_metadata=[sampled[i]], return_metadata=True, return_tensors="pt",
                **self._videos_kwargs), "pixel_values_videos", "video_grid_thw")
        if keys["image"] or keys["video"]:
            misses = len(images) + len(headers)
            self._metrics.processor_cache(len(request.images) + len(request.videos) - misses, misses,
                                          self._cache.nbytes)
        # The chat template sees placeholders in the order the parts name them.
        order: dict[str, list[int]] = {"image": [], "video": []}
        messages = []
        for message in request.messages:
            parts = []
            for part in message.content:
                if part["type"] == "text":
                    parts.append({"type": "text", "text": part["text"]})
                else:
                    order[part["type"]].append(part[part["type"]])
                    parts.append({"type": part["type"]})
            messages.append({"role": message.role, "content": parts})
        text = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = text.replace(self._video_part, self._video_token)
        used = {kind: [done[kind][i] for i in indices] for kind, indices in order.items()}
        ids, kinds = self._tokenize(text, used["image"], used["video"])
        length = int(ids.shape[0])
        if length > self._limits.max_prompt_tokens:
            raise LimitExceeded(
                f"invalid request: the prompt has {length} tokens (images and videos included), "
                f"at most {self._limits.max_prompt_tokens}"
            )
        pixels, grid = _stack(used["image"])
        video_pixels, video_grid = _stack(used["video"])
        digests = {kind: [keys[kind][i][1] for i in indices] for kind, indices in order.items()}
        visuals = self._spans(kinds, grid, video_grid, digests)
        return Prompt(input_ids=ids, mm_token_type_ids=kinds, pixel_values=pixels, image_grid_thw=grid,
                      positions=rotary_positions(length, visuals, self._merge), visuals=visuals,
                      pixel_values_videos=video_pixels, video_grid_thw=video_grid)

    def _keep(self, key: tuple[str, bytes], outputs: Any, pixels: str, grid: str) -> Processed:
        """One image's or video's processor outputs, in the encoder's dtype, into the cache."""
        values = outputs[pixels] if self._pixel_dtype is None else outputs[pixels].to(self._pixel_dtype)
        metadata = outputs.get("video_metadata")
        processed = Processed(values, outputs[grid], None if metadata is None else metadata[0])
        self._cache.put(key, processed)
        return processed

    def _tokenize(self, text: str, images: list[Processed],
                  videos: list[Processed]) -> tuple[torch.Tensor, torch.Tensor]:
        """What the processor's ``__call__`` does with the text once it has processed the images and videos,
        from the processed ones (cached or new): each placeholder expanded by the processor's own rule,
        then tokenized, then each token's modality."""
        processor = self._processor
        if text.count(processor.image_token) != len(images) or text.count(self._video_token) != len(videos):
            raise InvalidRequest("invalid request: a text part contains the model's image or video placeholder token")
        image_inputs = {"image_grid_thw": torch.cat([p.grid for p in images]) if images else None}
        video_inputs = {"video_grid_thw": torch.cat([p.grid for p in videos]) if videos else None,
                        "video_metadata": [p.metadata for p in videos]}
        [text], _ = processor.get_text_with_replacements(
            [text], [processor.replace_image_token(image_inputs, i) for i in range(len(images))],
            [processor.replace_video_token(video_inputs, i) for i in range(len(videos))])
        # As lists, then one tensor each: the tokenizer's own conversion to tensors took half its call,
        # in Python, holding the interpreter lock that a burst's prompt workers share.
        ids = torch.tensor(processor.tokenizer(text, return_token_type_ids=False, return_attention_mask=False)
                           ["input_ids"], dtype=torch.long)
        # The processor's create_mm_token_type_ids, as two comparisons instead of NumPy calls on a list.
        kinds = torch.zeros_like(ids)
        for kind, kind_ids in self._modality_ids.items():
            kinds[torch.isin(ids, kind_ids)] = kind
        return ids, kinds

    def _sample(self, header: VideoHeader) -> VideoMetadata:
        """The frames the checkpoint's video processor would take, from the header's facts alone."""
        metadata = VideoMetadata(total_num_frames=header.frames, fps=header.fps, width=header.width,
                                 height=header.height, duration=header.seconds, video_backend="pyav")
        metadata.frames_indices = self._sampler.sample_frames(metadata, fps=self._fps).tolist()
        return metadata

    def _check_visual_budget(self, images: dict[int, Any], headers: dict[int, VideoHeader],
                             sampled: dict[int, VideoMetadata], cached: list[Processed]) -> None:
        """Refuse before any video is decoded: frames after sampling and visual tokens, as the processor
        will count them from the sizes it is given (or counted them, for what the cache holds)."""
        limits = self._limits
        frames = sum(len(metadata.frames_indices) for metadata in sampled.values())
        frames += sum(len(p.metadata.frames_indices) for p in cached if p.metadata is not None)
        if frames > limits.max_sampled_frames:
            raise LimitExceeded(f"invalid request: the videos sample to {frames} frames, at most "
                                f"{limits.max_sampled_frames} per request")
        image_kwargs = {"min_pixels": self._image_size["shortest_edge"], "max_pixels": self._image_size["longest_edge"]}
        patches = sum(self._processor.image_processor.get_number_of_image_patches(image.height, image.width,
                                                                                  image_kwargs)
                      for image in images.values())
        patches += sum(self._sampler.get_num_of_video_patches(len(sampled[i].frames_indices), header.height,
                                                              header.width, self._videos_kwargs)
                       for i, header in headers.items())
        patches += sum(p.patches for p in cached)
        tokens, most = patches // self._merge ** 2, min(limits.max_visual_tokens, limits.max_prompt_tokens)
        if tokens > most:
            raise LimitExceeded(f"invalid request: the images and videos take {tokens} visual tokens, at most "
                                f"{most} per request")

    def _spans(self, kinds: torch.Tensor, grid: torch.Tensor | None, video_grid: torch.Tensor | None,
               digests: dict[str, list[bytes]]) -> tuple[VisualSpan, ...]:
        """Each run of placeholder tokens, in order: an image's, or one temporal patch of a video's."""
        units = {IMAGE: iter((g, digest, 0) for g, digest in zip([] if grid is None else grid.tolist(),
                                                                   digests["image"])),
                 VIDEO: iter([((1, h, w), digest, part) for (t, h, w), digest in
                              zip([] if video_grid is None else video_grid.tolist(), digests["video"])
                              for part in range(t)])}
        spans, start, pixel = [], 0, {IMAGE: 0, VIDEO: 0}
        for kind, run in itertools.groupby(kinds.tolist()):
            length = len(list(run))
            if kind in units:
                (t, h, w), digest, part = next(units[kind])
                spans.append(VisualSpan(start, start + length, pixel[kind], pixel[kind] + t * h * w, digest,
                                        (t, h, w), video=kind == VIDEO, part=part))
                pixel[kind] += t * h * w
            start += length
        return tuple(spans)


def rotary_positions(length: int, visuals: Sequence[VisualSpan], merge: int) -> torch.Tensor:
    """Qwen3-VL's 3-D rotary positions (its model's ``get_rope_index``), from the spans the builder has
    found anyway: a text token advances all three axes by one; an image (a video's temporal patch) takes
    its merged grid's (t, h, w) indices from where the text stopped, and the text after it goes on
    max(h, w) further. The model's version groups the tokens in Python and makes dozens of small torch
    calls: with the processor's modality lookup, a third of a cached image prompt's build, under the
    interpreter lock that a burst's prompt workers share (docs/bench, 8b5128a)."""
    positions = torch.empty(3, length, dtype=torch.long)
    at = done = 0
    for span in visuals:
        positions[:, done:span.start] = torch.arange(at, at + span.start - done)
        at += span.start - done
        positions[:, span.start:span.end] = _grid_positions(*span.grid, merge) + at
        at += max(span.grid[1], span.grid[2]) // merge
        done = span.end
    positions[:, done:] = torch.arange(at, at + length - done)
    return positions


@functools.lru_cache(maxsize=1024)
def _grid_positions(t: int, h: int, w: int, merge: int) -> torch.Tensor:
    """(3, t * h * w / merge**2): each merged patch's temporal, row and column index (never written to)."""
    axes = torch.meshgrid(torch.arange(t), torch.arange(h // merge), torch.arange(w // merge), indexing="ij")
    return torch.stack(axes).reshape(3, -1)


def _size(defaults: Any, min_pixels: int, max_pixels: int) -> dict[str, int]:
    """The processor's ``size`` (pixels: shortest_edge at least, longest_edge at most), with overrides."""
    size = dict(defaults)
    if min_pixels:
        size["shortest_edge"] = min_pixels
    if max_pixels:
        size["longest_edge"] = max_pixels
    return size


def _stack(processed: list[Processed]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The pixel rows and grids of images (or videos) in prompt order, as the processor batches them."""
    if not processed:
        return None, None
    if len(processed) == 1:  # the cache's own tensors: nothing writes to a prompt's pixels
        return processed[0].pixels, processed[0].grid
    return torch.cat([p.pixels for p in processed]), torch.cat([p.grid for p in processed])


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()
