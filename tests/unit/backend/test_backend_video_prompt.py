"""A video's prompt is the checkpoint's own: its video processor samples, sizes and time-stamps the frames,
and the engine decodes only the frames it samples."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from backend_samples import png, tensors, tiny_checkpoint
from transformers.video_utils import load_video

from backend_python.config import EngineConfig, Limits
from backend_python.errors import LimitExceeded
from backend_python.loader import load
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest
from tests.samples import videos

pytestmark = pytest.mark.unit

SAMPLING = dict(video_fps=2.0, video_min_pixels=4096, video_max_pixels=1_310_720)
VIDEO_KWARGS = {"size": {"shortest_edge": 4096, "longest_edge": 1_310_720}, "cap_pixels_per_frame": True}


@pytest.fixture(scope="module")
def model():
    return load(EngineConfig(model_path=str(tiny_checkpoint())))


def builder(model, **limits) -> PromptBuilder:
    config = EngineConfig(model_path=str(tiny_checkpoint()), image_max_pixels=160 * 160,
                          limits=Limits(**{"max_videos": 2, **limits}), **SAMPLING)
    return PromptBuilder(model.processor, config)


def request(parts, images=(), videos=()):
    return GenerationRequest.from_tensors(tensors([{"role": "user", "content": parts}], images, videos),
                                          Limits(max_videos=2))


def ask_about(video: bytes):
    return request([{"type": "video", "video": 0}, {"type": "text", "text": "What happens?"}], videos=[video])


@pytest.mark.parametrize("seconds, fps, size", [(3.0, 10, (160, 96)), (2.6, 25, (200, 120)), (12.0, 5, (96, 96))])
def test_a_video_prompt_equals_the_processor_sampling_every_decoded_frame_itself(model, tmp_path, seconds, fps, size):
    """transformers' own PyAV reader decodes every frame; the processor samples them (do_sample_frames)."""
    data = videos.clip(seconds, fps=fps, size=size)
    prompt = builder(model).build(ask_about(data))
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    every, metadata = load_video(str(path), backend="pyav",
                                 sample_indices_fn=lambda metadata, **_: np.arange(metadata.total_num_frames))
    text = "<|im_start|>user\n<|video_pad|>What happens?<|im_end|>\n<|im_start|>assistant\n"
    expected = model.processor(text=[text], videos=[every], return_tensors="pt", videos_kwargs={
        **VIDEO_KWARGS, "video_metadata": [metadata], "do_sample_frames": True, "fps": 2.0})
    assert prompt.input_ids.tolist() == expected["input_ids"][0].tolist()
    assert torch.equal(prompt.video_grid_thw, expected["video_grid_thw"])
    assert torch.equal(prompt.pixel_values_videos, expected["pixel_values_videos"])


def test_each_pair_of_frames_follows_its_timestamp_without_the_templates_outer_markers(model):
    prompt = builder(model).build(ask_about(videos.clip(3.0, fps=10)))
    text = model.processor.tokenizer.decode(prompt.input_ids)
    chunk = r"<\|vision_start\|>(?:<\|video_pad\|>)+<\|vision_end\|>"
    assert re.search(rf"user\n<0\.3 seconds>{chunk}<1\.4 seconds>{chunk}<2\.6 seconds>{chunk}What happens\?", text)
    assert [(s.video, s.grid) for s in prompt.visuals] == [(True, (1, 6, 8))] * 3  # 96 x 128 pixels
    assert prompt.visual_tokens == prompt.video_tokens == 3 * 12 and prompt.videos == 1


def test_a_video_and_an_image_in_one_turn(model):
    clip, picture = videos.clip(3.0, fps=10), png(120, 80)
    both = request([{"type": "text", "text": "Compare"}, {"type": "image", "image": 0},
                    {"type": "text", "text": "with"}, {"type": "video", "video": 0}], images=[picture], videos=[clip])
    prompt = builder(model).build(both)
    image, *frames = prompt.visuals
    assert not image.video and all(s.video for s in frames) and len(frames) == 3
    assert image.end < frames[0].start and len({s.digest for s in frames}) == 1 and image.digest != frames[0].digest
    assert [(s.pixel_start, s.pixel_end) for s in frames] == [(0, 48), (48, 96), (96, 144)]
    assert torch.equal(prompt.pixels(image), prompt.pixel_values)
    assert prompt.visual_tokens == image.end - image.start + 36
    assert (prompt.input_ids == model.processor.video_token_id).sum() == 36


def test_the_visual_token_limit_counts_what_the_processor_will_and_refuses_before_decoding(model):
    clip, picture = videos.clip(3.0, fps=10), png(120, 80)
    both = request([{"type": "image", "image": 0}, {"type": "video", "video": 0}], images=[picture], videos=[clip])
    tokens = builder(model).build(both).visual_tokens
    assert builder(model, max_visual_tokens=tokens).build(both).visual_tokens == tokens
    with pytest.raises(LimitExceeded, match=f"take {tokens} visual tokens, at most {tokens - 1} per request"):
        builder(model, max_visual_tokens=tokens - 1).build(both)


def test_frames_after_sampling_are_limited_per_request(model):
    two = request([{"type": "video", "video": 0}, {"type": "video", "video": 1}],
                  videos=[videos.clip(3.0, fps=10), videos.clip(4.0, fps=10)])
    with pytest.raises(LimitExceeded, match="the videos sample to 14 frames, at most 10 per request"):
        builder(model, max_sampled_frames=10).build(two)
    assert builder(model, max_sampled_frames=14).build(two).videos == 2
