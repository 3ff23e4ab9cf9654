"""Prompts across the engine process's pipe: every tensor arrives as it was built, and an image or video
the engine process already holds crosses as a reference, not megabytes of pixels again."""

from __future__ import annotations

import pytest
import torch
from backend_samples import png, tensors, tiny_checkpoint
from multiprocessing.reduction import ForkingPickler

from backend_python.config import EngineConfig, Limits
from backend_python.errors import EngineFailure
from backend_python.loader import load_processor
from backend_python.prompt import PromptBuilder
from backend_python.prompt_transfer import PixelMirror
from backend_python.request import GenerationRequest
from tests.samples import videos

pytestmark = pytest.mark.unit

LIMITS = Limits(max_videos=2)
RED, BLUE = png(448, 448, (200, 40, 40)), png(448, 448, (20, 40, 220))


@pytest.fixture(scope="module")
def prompts():
    config = EngineConfig(model_path=str(tiny_checkpoint()), video_fps=2.0, limits=LIMITS)
    return PromptBuilder(load_processor(config), config)


def ask(prompts, text, images=(), video=None):
    parts = [{"type": "image", "image": i} for i in range(len(images))]
    if video is not None:
        parts.append({"type": "video", "video": 0})
    parts.append({"type": "text", "text": text})
    request = GenerationRequest.from_tensors(
        tensors([{"role": "user", "content": parts}], images, [video] if video is not None else []), LIMITS)
    return prompts.build(request)


def cross(sender: PixelMirror, receiver: PixelMirror, prompt):
    """Pack, pickle as the pipe does, unpickle and unpack: the prompt that arrives, and the bytes sent."""
    data = bytes(ForkingPickler.dumps(sender.pack(prompt)))
    return receiver.unpack(ForkingPickler.loads(data), sender.generation), len(data)


def assert_same(got, sent):
    for name in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw", "positions",
                 "pixel_values_videos", "video_grid_thw"):
        a, b = getattr(got, name), getattr(sent, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), name
    assert got.visuals == sent.visuals


def test_an_image_sent_again_crosses_as_a_reference_and_arrives_as_built(prompts):
    sender, receiver = PixelMirror(2**30), PixelMirror(2**30)
    turns = [ask(prompts, "What is this?", [RED]), ask(prompts, "And now, in one word?", [RED]),
             ask(prompts, "Which is bluer?", [BLUE, RED]), ask(prompts, "Compare them.", [RED, BLUE])]
    sizes = []
    for prompt in turns:
        got, size = cross(sender, receiver, prompt)
        assert_same(got, prompt)
        sizes.append(size)
    pixels = turns[0].pixel_values.numel() * turns[0].pixel_values.element_size()
    assert sizes[0] > pixels  # the first time, the rows themselves
    assert sizes[1] < pixels / 20  # then a reference
    assert pixels < sizes[2] < 2 * pixels  # BLUE new, RED held
    assert sizes[3] < pixels / 20  # both held, in the other order
    assert len(receiver) == len(sender) == 2


def test_a_video_crosses_once(prompts):
    sender, receiver = PixelMirror(2**30), PixelMirror(2**30)
    clip = videos.clip(2.0, fps=10, size=(160, 96))
    first, second = ask(prompts, "What happens?", video=clip), ask(prompts, "And then?", video=clip)
    assert sum(span.video for span in first.visuals) > 1  # a span per temporal patch, one video
    got, size = cross(sender, receiver, first)
    assert_same(got, first)
    got, again = cross(sender, receiver, second)
    assert_same(got, second)
    video_bytes = first.pixel_values_videos.numel() * first.pixel_values_videos.element_size()
    assert size > video_bytes and again < video_bytes / 20


def test_evictions_and_a_new_generation_keep_both_sides_in_step(prompts):
    """A budget of one image: each new one evicts the other on both sides, so nothing is referenced that
    the engine process dropped; after a failed send the sender starts over and the receiver with it."""
    red = ask(prompts, "What is this?", [RED])
    one = red.pixel_values.numel() * red.pixel_values.element_size()
    sender, receiver = PixelMirror(one), PixelMirror(one)
    sizes = []
    for prompt in (red, ask(prompts, "And this?", [BLUE]), ask(prompts, "And this one?", [RED]),
                   ask(prompts, "Again?", [RED])):
        got, size = cross(sender, receiver, prompt)
        assert_same(got, prompt)
        sizes.append(size)
    assert min(sizes[:3]) > one and sizes[3] < one / 20
    sender.reset()  # as after a send that failed mid-way
    got, size = cross(sender, receiver, red)
    assert_same(got, red)
    assert size > one and len(receiver) == 1


def test_without_a_budget_every_prompt_sends_its_pixels(prompts):
    sender, receiver = PixelMirror(0), PixelMirror(0)
    red = ask(prompts, "What is this?", [RED])
    sizes = [cross(sender, receiver, red)[1] for _ in range(2)]
    assert sizes[0] == sizes[1] > red.pixel_values.numel() * red.pixel_values.element_size()


def test_a_reference_the_engine_process_lacks_fails_that_prompt_with_an_internal_error(prompts):
    sender = PixelMirror(2**30)
    red = ask(prompts, "What is this?", [RED])
    sender.pack(red)
    with pytest.raises(EngineFailure, match="internal error"):
        cross(sender, PixelMirror(2**30), red)
