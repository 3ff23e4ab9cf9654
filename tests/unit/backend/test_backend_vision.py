"""The engine's vision encoder against the checkpoint's own, on the tiny checkpoint in float32."""

from __future__ import annotations

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
