"""A prompt's rotary positions and token modalities, which the builder works out from the spans it finds,
are exactly what the checkpoint's own code computes (the model's ``get_rope_index``, the processor's
``create_mm_token_type_ids``): a wrong position gives the model a different picture, not an error."""

from __future__ import annotations

import pytest
import torch
from backend_samples import png, tensors, tiny_checkpoint

from backend_python.config import EngineConfig, Limits
from backend_python.loader import load
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest
from tests.samples import videos

pytestmark = pytest.mark.unit

LIMITS = Limits(max_videos=2, max_images=4)


@pytest.fixture(scope="module")
def model():
    return load(EngineConfig(model_path=str(tiny_checkpoint())))


@pytest.fixture(scope="module")
def prompts(model):
    config = EngineConfig(model_path=str(tiny_checkpoint()), image_max_pixels=320 * 320, video_fps=2.0,
                          video_min_pixels=4096, video_max_pixels=1_310_720, limits=LIMITS)
    return PromptBuilder(model.processor, config)


def image(n: int) -> dict:
    return {"type": "image", "image": n}


def text(words: str) -> dict:
    return {"type": "text", "text": words}


CHATS = {
    "text only": ([{"role": "user", "content": [text("Hello there.")]}], 0, 0),
    "one image": ([{"role": "user", "content": [image(0), text("What is this?")]}], 1, 0),
    "two images of different shapes over three turns": ([
        {"role": "user", "content": [image(0), text("And this one?")]},
        {"role": "assistant", "content": [text("A red square.")]},
        {"role": "user", "content": [text("Now compare it with"), image(1), text("please.")]}], 2, 0),
    "images side by side": ([{"role": "user", "content": [image(0), image(1), text("Which is wider?")]}], 2, 0),
    "a video's temporal patches": ([{"role": "user", "content": [{"type": "video", "video": 0},
                                                                 text("What happens?")]}], 0, 1),
    "an image, then a video": ([{"role": "user", "content": [text("Compare"), image(0), text("with"),
                                                             {"type": "video", "video": 0}]}], 1, 1),
}


@pytest.mark.parametrize("name", list(CHATS))
def test_positions_and_modalities_equal_the_checkpoints_own(model, prompts, name):
    messages, n_images, n_videos = CHATS[name]
    pictures = [png(96, 64), png(300, 120, (20, 90, 200))][:n_images]
    clips = [videos.clip(3.0, fps=10)][:n_videos]
    prompt = prompts.build(GenerationRequest.from_tensors(tensors(messages, pictures, clips), LIMITS))
    kinds = model.processor.create_mm_token_type_ids([prompt.input_ids.tolist()])[0]
    assert prompt.mm_token_type_ids.tolist() == kinds
    expected, _ = model.model.model.get_rope_index(prompt.input_ids[None], prompt.mm_token_type_ids[None],
                                                   prompt.image_grid_thw, prompt.video_grid_thw)
    assert prompt.positions.dtype == torch.long
    assert torch.equal(prompt.positions, expected[:, 0])
    assert len(prompt.visuals) == n_images + (3 if n_videos else 0)  # a 3-s clip at 2 fps: three patches
