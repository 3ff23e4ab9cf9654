"""How many graphs ``compile_decode`` asks torch.compile for: each one is traced again at every start
(0.2-2.5 s each on an H200, even with Inductor's cache warm), and one that only serving reaches is
seconds of some request's latency. Dynamo runs here on the CPU with a counting backend in place of
Inductor (which the engine only uses on CUDA), so the graphs counted are the ones a GPU compiles."""

from __future__ import annotations

import pytest
import torch
from backend_samples import tiny_checkpoint
from torch._dynamo.testing import CompileCounter

from backend_python import decode, vision
from backend_python.config import EngineConfig, Limits
from backend_python.loader import load
from backend_python.model_runner import ModelRunner

pytestmark = pytest.mark.unit


@pytest.fixture
def engine():
    config = EngineConfig(model_path=str(tiny_checkpoint()), max_num_seqs=8, max_model_len=256,
                          limits=Limits(max_prompt_tokens=200, max_new_tokens=50))
    torch._dynamo.reset()
    runner = ModelRunner(load(config), config)
    runner.start()
    yield runner
    torch._dynamo.reset()


def _prefill(runner, prompts: int, tokens: int) -> None:
    width = runner.model.config.text_config.hidden_size
    bounds = [tokens * i for i in range(prompts + 1)]
    embeds = torch.randn((bounds[-1], width))
    positions = torch.arange(tokens).repeat(prompts).expand(3, -1)
    runner.decoder.prefill(embeds, positions, bounds, torch.tensor(bounds, dtype=torch.int32),
                           torch.arange(bounds[-1]))


def test_decode_steps_and_prefills_of_any_size_share_four_graphs(engine):
    counter = CompileCounter()
    engine.decoder._project = torch.compile(decode._project, backend=counter, dynamic=True)
    engine.decoder._feed_forward = torch.compile(decode._feed_forward, backend=counter, dynamic=True)
    with torch.inference_mode():
        # What the runner's start warms up: a step of one row and of two (and on a GPU of 32), a prefill
        # of three prompts.
        for rows in engine.decoder.warm_up_rows:
            engine._forward(rows, engine._span_step)
        _prefill(engine, 3, 37)
        assert counter.frame_count == 4  # each function once for one row, once for any other count
        for rows in (3, 8):
            engine._forward(rows, engine._span_step)
        for prompts, tokens in ((1, 37), (1, 5), (2, 64), (5, 128)):
            _prefill(engine, prompts, tokens)
    assert counter.frame_count == 4, "serving shapes compiled graphs the start's warm-up did not"


def test_images_of_any_size_share_the_vision_blocks_two_graphs(engine):
    counter = CompileCounter()
    encoder = engine.vision
    encoder._before = torch.compile(vision._before_attention, backend=counter, dynamic=True)
    encoder._after = torch.compile(vision._after_attention, backend=counter, dynamic=True)
    channels = encoder.patch_w.shape[1]
    with torch.inference_mode():
        encoder.warm_up(torch.device("cpu"))
        assert counter.frame_count == 2
        for grid in ([[1, 4, 8]], [[1, 8, 8], [1, 2, 6]]):
            grid = torch.tensor(grid)
            encoder(torch.zeros((int(grid.prod(1).sum()), channels)), encoder.layout(grid))
    assert counter.frame_count == 2, "an image size compiled a graph the start's warm-up did not"


def test_prefills_through_the_graphs_buffers_reuse_the_warm_ups_graphs():
    """A start with prefill graphs: their static buffers are what the compiled regions read from then
    on, and a buffer made outside inference mode fails the guard on dispatch keys that the warm-up's
    tensors set (on an H200 each region compiled once more while the graphs were captured, seconds of
    every start)."""
    config = EngineConfig(model_path=str(tiny_checkpoint()), max_num_seqs=8, max_model_len=256,
                          prefill_graph_tokens=40, limits=Limits(max_prompt_tokens=200, max_new_tokens=50))
    torch._dynamo.reset()
    try:
        runner = ModelRunner(load(config), config)
        counter = CompileCounter()
        runner.decoder._project = torch.compile(decode._project, backend=counter, dynamic=True)
        runner.decoder._feed_forward = torch.compile(decode._feed_forward, backend=counter, dynamic=True)
        encoder, blocks = runner.vision, CompileCounter()
        encoder._before = torch.compile(vision._before_attention, backend=blocks, dynamic=True)
        encoder._after = torch.compile(vision._after_attention, backend=blocks, dynamic=True)
        runner.decoder.compiled = True  # the start warms up as a GPU's does
        runner.start()
        assert runner.decoder.prefill_graphs is not None and encoder.graphs is not None
        with torch.inference_mode():
            for prompts, tokens in ((1, 37), (2, 12)):  # padded to the graphs' buckets of 40 and 32 rows
                _prefill(runner, prompts, tokens)
            grid = torch.tensor([[1, 8, 10]])  # 80 patches, within the vision graphs' 160
            encoder(torch.zeros((80, encoder.patch_w.shape[1])), encoder.layout(grid))
        assert counter.frame_count == 4, "the prefill graphs' buffers compiled graphs the warm-up did not"
        assert blocks.frame_count == 2, "the vision graphs' buffers compiled graphs the warm-up did not"
    finally:
        torch._dynamo.reset()
