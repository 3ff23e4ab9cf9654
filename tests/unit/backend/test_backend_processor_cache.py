"""Processed images and videos are kept by content: a request that sends one again (every turn of a chat
does) gets the prompt the processor itself makes, without decoding or processing it again."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from backend_samples import png, tensors, tiny_checkpoint
from PIL import Image

from backend_python.config import EngineConfig, Limits
from backend_python.errors import InvalidRequest, LimitExceeded
from backend_python.loader import load
from backend_python.metrics import EngineMetrics
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest
from backend_python.visual_cache import VisualCache
from tests.samples import videos

pytestmark = pytest.mark.unit

IMAGE_SIZE = {"shortest_edge": 4096, "longest_edge": 160 * 160}


class CountingMetrics(EngineMetrics):
    def __init__(self):
        self.hits = self.misses = self.held = 0

    def processor_cache(self, hits: int, misses: int, held_bytes: int) -> None:
        self.hits += hits
        self.misses += misses
        self.held = held_bytes


@pytest.fixture(scope="module")
def model():
    return load(EngineConfig(model_path=str(tiny_checkpoint())))


def builder(model, cache_gib: float = 0.5, **limits) -> tuple[PromptBuilder, CountingMetrics]:
    config = EngineConfig(model_path=str(tiny_checkpoint()), image_min_pixels=4096, image_max_pixels=160 * 160,
                          video_fps=2.0, processor_cache_gib=cache_gib, limits=Limits(**{"max_videos": 2, **limits}))
    metrics = CountingMetrics()
    return PromptBuilder(model.processor, config, metrics=metrics), metrics


def jpeg(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 20 + seed).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def chat(images=(), clips=(), question: str = "Compare them.") -> GenerationRequest:
    """Two turns: the first names the first image, the second the rest and the videos."""
    first = [{"type": "image", "image": 0}, {"type": "text", "text": "What is this?"}] if images else []
    later = [{"type": "image", "image": i} for i in range(1, len(images))] \
        + [{"type": "video", "video": i} for i in range(len(clips))] + [{"type": "text", "text": question}]
    messages = ([{"role": "user", "content": first}, {"role": "assistant", "content": "A picture."}] if first else []) \
        + [{"role": "user", "content": later}]
    return GenerationRequest.from_tensors(tensors(messages, images, clips), Limits(max_videos=2))


def processors_own(model, request: GenerationRequest, prompt):
    """The processor's whole call on the same chat: images, videos and text together."""
    processor = model.processor
    text = processor.apply_chat_template(
        [{"role": m.role, "content": [{"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})}
                                      for p in m.content]} for m in request.messages],
        tokenize=False, add_generation_prompt=True)
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in request.images]
    return processor(text=[text], images=images or None, return_tensors="pt", images_kwargs={"size": IMAGE_SIZE})


def test_a_resent_image_gives_the_processors_own_prompt_without_processing_it_again(model):
    build, metrics = builder(model)
    pictures = [jpeg(200, 120, 1), png(96, 160, (20, 90, 200))]
    request = chat(pictures)
    first = build.build(request)
    again = build.build(request)
    expected = processors_own(model, request, first)
    for prompt in (first, again):
        assert prompt.input_ids.tolist() == expected["input_ids"][0].tolist()
        assert prompt.mm_token_type_ids.tolist() == expected["mm_token_type_ids"][0].tolist()
        assert torch.equal(prompt.pixel_values, expected["pixel_values"])
        assert torch.equal(prompt.image_grid_thw, expected["image_grid_thw"])
        assert torch.equal(prompt.positions, first.positions)
        assert [s.digest for s in prompt.visuals] == [s.digest for s in first.visuals]
    assert (metrics.misses, metrics.hits) == (2, 2)
    assert metrics.held == sum(t.numel() * t.element_size() for t in [first.pixel_values])


def test_a_resent_video_keeps_its_frames_timestamps_and_pixels(model):
    build, metrics = builder(model)
    clip, picture = videos.clip(3.0, fps=10), png(120, 80)
    request = chat([picture, png(64, 64)], [clip])
    first = build.build(request)
    again = build.build(request)
    assert again.input_ids.tolist() == first.input_ids.tolist()
    assert torch.equal(again.pixel_values_videos, first.pixel_values_videos)
    assert torch.equal(again.video_grid_thw, first.video_grid_thw)
    assert again.visuals == first.visuals
    text = model.processor.tokenizer.decode(again.input_ids)
    assert "<0.3 seconds>" in text and "<2.6 seconds>" in text
    assert (metrics.misses, metrics.hits) == (3, 3)


def test_the_same_text_with_another_image_is_processed_as_new(model):
    build, metrics = builder(model)
    one = build.build(chat([png(96, 96, (200, 0, 0))]))
    other = build.build(chat([png(96, 96, (0, 200, 0))]))
    assert one.input_ids.tolist() == other.input_ids.tolist()
    assert not torch.equal(one.pixel_values, other.pixel_values)
    assert one.visuals[0].digest != other.visuals[0].digest
    assert (metrics.misses, metrics.hits) == (2, 0)


def test_the_visual_token_limit_counts_what_the_cache_holds(model):
    """One 96x96 image is 9 visual tokens: it fits alone, and twice (both from the cache) it does not."""
    build, _ = builder(model, max_visual_tokens=12)
    picture = png(96, 96)
    build.build(chat([picture]))
    with pytest.raises(LimitExceeded, match="18 visual tokens, at most 12"):
        build.build(chat([picture, picture]))


def test_without_a_cache_prompts_are_the_same_and_nothing_is_kept(model):
    cached, _ = builder(model)
    uncached, metrics = builder(model, cache_gib=0)
    request = chat([jpeg(160, 100, 3)])
    assert uncached.build(request).input_ids.tolist() == cached.build(request).input_ids.tolist()
    uncached.build(request)
    assert (metrics.misses, metrics.hits, metrics.held) == (2, 0, 0)


def test_the_models_placeholder_token_in_a_users_text_is_refused_clearly(model):
    build, _ = builder(model)
    for text in ("<|image_pad|> what is this?", "and <|video_pad|>"):
        with pytest.raises(InvalidRequest, match="placeholder token"):
            build.build(chat([png()], question=text))


def test_a_negative_cache_size_is_refused():
    with pytest.raises(ValueError, match="processor_cache_gib"):
        EngineConfig.from_parameters({"model_path": "x", "processor_cache_gib": "-1"})


@dataclass(frozen=True)
class Blob:
    nbytes: int


def test_the_cache_drops_the_least_recently_used_within_its_budget():
    cache: VisualCache[Blob] = VisualCache(100)
    cache.put("a", Blob(40))
    cache.put("b", Blob(40))
    assert cache.get("a") == Blob(40)  # now "b" is the least recently used
    cache.put("c", Blob(40))
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    assert cache.nbytes == 80 and len(cache) == 2
    cache.put("huge", Blob(101))  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.get("huge") is None and len(cache) == 2
    cache.put("a", Blob(60))  # stored again: counted once
    assert cache.nbytes == 100 and len(cache) == 2
