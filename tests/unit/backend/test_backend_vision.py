"""The engine's vision encoder against the checkpoint's own, on the tiny checkpoint in float32."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from backend_samples import png, tensors, tiny_checkpoint, user

from backend_python.config import EngineConfig, Limits
from backend_python.loader import load
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest
from backend_python.vision import VisionEncoder

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def loaded():
    config = EngineConfig(model_path=str(tiny_checkpoint()), max_num_seqs=2, max_model_len=512,
                          limits=Limits(max_prompt_tokens=400), image_max_pixels=160 * 160)
    return config, load(config)


def pixels_and_grid(loaded, sizes, **builder):
    config, model = loaded
    prompts = PromptBuilder(model.processor, config, **builder)
    built = [prompts.build(GenerationRequest.from_tensors(tensors(user("Describe.", 1), [png(w, h, colour)]),
                                                          config.limits))
             for w, h, colour in sizes]
    return torch.cat([p.pixel_values for p in built]), torch.cat([p.image_grid_thw for p in built])


SIZES = [(64, 48, (255, 0, 0)), (150, 90, (0, 128, 255)), (96, 96, (20, 200, 20))]


def test_features_equal_the_checkpoints_vision_model_for_images_of_different_sizes(loaded):
    pixels, grid = pixels_and_grid(loaded, SIZES)
    assert len({int(t * h * w) for t, h, w in grid}) == 3
    visual = loaded[1].model.model.visual
    encoder = VisionEncoder(visual)
    with torch.inference_mode():
        encoder.warm_up(torch.device("cpu"))  # what the engine runs at start, before any request
        expected = visual(pixels, grid_thw=grid)
        features, deepstack = encoder(pixels, encoder.layout(grid))
    torch.testing.assert_close(features, expected.pooler_output)
    assert len(deepstack) == len(expected.deepstack_features) > 0
    for got, want in zip(deepstack, expected.deepstack_features):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("max_patches", [512, 1024])
def test_images_padded_to_a_graph_bucket_get_the_checkpoints_features(loaded, max_patches):
    """The blocks' path a GPU replays as captured graphs (prefill_graphs.py), run directly here: the
    batch's patches (844) padded up to a bucket (1024), or more than the largest bucket (512): as they come."""
    pixels, grid = pixels_and_grid(loaded, SIZES)
    assert 512 < pixels.shape[0] <= 1024
    visual = loaded[1].model.model.visual
    encoder = VisionEncoder(visual)
    graphs = encoder.graph_blocks(max_patches, capture=False)
    with torch.inference_mode():
        graphs["hidden"].fill_(float("nan"))  # whatever a larger batch left in the padding rows
        expected = visual(pixels, grid_thw=grid)
        features, deepstack = encoder(pixels, encoder.layout(grid))
    torch.testing.assert_close(features, expected.pooler_output)
    for got, want in zip(deepstack, expected.deepstack_features):
        torch.testing.assert_close(got, want)


def test_an_image_does_not_change_the_features_of_the_others_in_its_batch(loaded):
    pixels, grid = pixels_and_grid(loaded, SIZES)
    changed = pixels.clone()
    first = int(grid[0].prod())
    changed[:first] = torch.rand_like(changed[:first])
    encoder = VisionEncoder(loaded[1].model.model.visual)
    with torch.inference_mode():
        before, _ = encoder(pixels, encoder.layout(grid))
        after, _ = encoder(changed, encoder.layout(grid))
    tokens = first // encoder.merge ** 2  # merged tokens of the first image
    assert not torch.allclose(before[:tokens], after[:tokens])
    torch.testing.assert_close(before[tokens:], after[tokens:])


def test_the_prompt_builder_hands_over_pixels_in_the_encoders_dtype(loaded):
    pixels, _ = pixels_and_grid(loaded, SIZES[:1], pixel_dtype=torch.bfloat16)
    reference, _ = pixels_and_grid(loaded, SIZES[:1])
    assert pixels.dtype == torch.bfloat16
    assert torch.equal(pixels, reference.to(torch.bfloat16))


def test_video_features_equal_the_checkpoints_for_the_whole_video(loaded):
    """The engine encodes a video one temporal patch (two frames) at a time, as prompt chunks reach them;
    together they are what the checkpoint's encoder makes of the whole video at once."""
    from tests.samples import videos

    config, model = loaded
    prompts = PromptBuilder(model.processor, dataclasses.replace(config, video_min_pixels=4096,
                                                                 video_max_pixels=1_310_720, video_fps=2.0))
    clip = videos.clip(3.0, fps=10, size=(160, 96))
    prompt = prompts.build(GenerationRequest.from_tensors(
        tensors([{"role": "user", "content": [{"type": "video", "video": 0}]}], videos=[clip]), config.limits))
    assert int(prompt.video_grid_thw[0, 0]) == 3 and len(prompt.visuals) == 3
    visual = model.model.model.visual
    encoder = VisionEncoder(visual)
    with torch.inference_mode():
        expected = visual(prompt.pixel_values_videos, grid_thw=prompt.video_grid_thw)
        pixels = torch.cat([prompt.pixels(span) for span in prompt.visuals])
        features, deepstack = encoder(pixels, encoder.layout(torch.tensor([span.grid for span in prompt.visuals])))
    torch.testing.assert_close(features, expected.pooler_output)
    for got, want in zip(deepstack, expected.deepstack_features, strict=True):
        torch.testing.assert_close(got, want)
