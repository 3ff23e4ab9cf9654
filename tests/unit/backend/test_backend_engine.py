"""The engine on the tiny checkpoint: continuous batching gives the same answers as one request alone,
and as transformers' own generate."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from backend_samples import Sink, generate, png, run, tensors, tiny_checkpoint, truncated_jpeg, user

from backend_python.config import EngineConfig, Limits
from backend_python.engine import Engine
from backend_python.errors import InvalidImage, LimitExceeded, Overloaded
from backend_python.loader import load
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest

pytestmark = pytest.mark.unit



class SlowSink(Sink):
    """A client connection that takes four engine steps to carry each response."""

    def __init__(self):
        super().__init__()
        self.polls = 0

    def busy(self):
        self.polls += 1
        return self.polls % 4 != 0


@pytest.fixture(scope="module")
def loaded():
    config = EngineConfig(model_path=str(tiny_checkpoint()), max_num_seqs=4, max_model_len=512,
                          limits=Limits(max_prompt_tokens=400, max_new_tokens=100),
                          image_min_pixels=32 * 32 * 4, image_max_pixels=128 * 128)
    return config, load(config)


@pytest.fixture(scope="module")
def engine(loaded):
    config, model = loaded
    engine = Engine(model, config).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def prompts(loaded):
    config, model = loaded
    return PromptBuilder(model.processor, config)


def request(text, images=(), **scalars):
    return GenerationRequest.from_tensors(tensors(user(text, len(images)), images, **scalars),
                                          Limits(max_new_tokens=200, default_max_tokens=16))



REQUESTS = [
    dict(text="Describe this picture.", images=(png(64, 48),), max_tokens=12),
    dict(text="What is two plus two?", max_tokens=20),
    dict(text="A much longer question about the colours in this image, please.", images=(png(90, 60, (0, 0, 255)),), max_tokens=7),
    dict(text="hi", max_tokens=16),
]


def test_prompts_built_together_come_back_in_order_with_a_bad_image_refused_alone(prompts):
    requests = [request(**r) for r in REQUESTS]
    requests.insert(2, request("What is this?", images=(truncated_jpeg(),)))
    built = list(prompts.build_many(requests))
    assert isinstance(built[2], InvalidImage)
    del built[2], requests[2]
    assert [p.input_ids.tolist() for p in built] == [prompts.build(r).input_ids.tolist() for r in requests]


def test_batched_answers_equal_single_answers(engine, prompts):
    requests = [request(**r) for r in REQUESTS]
    alone = [run(engine, prompts, [r])[0].text for r in requests]
    together = [s.text for s in run(engine, prompts, requests)]
    assert together == alone
    assert all(alone)


def test_prompts_of_different_lengths_prefilled_together_get_their_answers_alone(engine, prompts):
    """Handed over at once, image and text prompts of 9 to 29 tokens make one prefill (packed end to
    end): each prompt attends to its own tokens only, so every answer is the one it gets alone."""
    requests = [request(**r) for r in REQUESTS]
    alone = [run(engine, prompts, [r])[0].text for r in requests]
    built = [prompts.build(r) for r in requests]
    assert len({p.length for p in built}) == len(built)
    before = engine.stats.snapshot()
    sinks = [Sink() for _ in requests]
    with engine.arriving_together():  # the engine thread plans them all in its next step
        for r, p, s in zip(requests, built, sinks):
            engine.submit(r, p, s)
    assert all(s.done.wait(60) for s in sinks)
    done = engine.stats.since(before)
    assert (done["prefills"], done["prefill_chunks"]) == (1, len(requests))
    assert [s.text for s in sinks] == alone


def test_running_sequences_decode_during_a_prefill_and_every_answer_is_the_one_it_gets_alone(loaded, prompts):
    """With ``decode_during_prefill``, the running sequences take decode steps between the prefill's
    layers (a GPU would otherwise idle them while the host enqueues it). One of them is cancelled as
    the prefill starts, so its blocks are given up in the middle of the prefill; its neighbour and the
    prompts being prefilled still get their answers alone."""
    config, model = loaded
    engine = Engine(model, dataclasses.replace(config, decode_during_prefill=True)).start()
    try:
        long = request("Tell me a story.", max_tokens=40, ignore_eos=True, stream=True)
        neighbour = request("Go on.", max_tokens=40, ignore_eos=True, stream=True)
        newcomers = [request(**REQUESTS[0]), request(**REQUESTS[1])]
        alone = [run(engine, prompts, [r])[0].text for r in (neighbour, *newcomers)]

        prefilling, original_prefill = threading.Event(), engine.runner.prefill

        class CancelledAtPrefill(Sink):
            def is_cancelled(self):
                return prefilling.is_set()

        def prefill(chunks, between=None):
            if any(c.seq.request is newcomers[0] for c in chunks):
                prefilling.set()
            try:
                return original_prefill(chunks, between)
            finally:
                prefilling.clear()

        engine.runner.prefill = prefill
        cancelled, kept = CancelledAtPrefill(), Sink()
        engine.submit(long, prompts.build(long), cancelled)
        engine.submit(neighbour, prompts.build(neighbour), kept)
        deadline = time.monotonic() + 60
        while len(kept.chunks) < 3 and time.monotonic() < deadline:  # both are decoding
            time.sleep(0.01)
        before = engine.stats.snapshot()
        sinks = [Sink() for _ in newcomers]
        with engine.arriving_together():  # one prefill for both
            for r, sink in zip(newcomers, sinks):
                engine.submit(r, prompts.build(r), sink)
        assert all(sink.done.wait(60) for sink in (cancelled, kept, *sinks))
        during = engine.stats.since(before)["decode_steps_in_prefill"]
    finally:
        engine.stop()
    assert during > 0, "no decode step ran during the prefill"
    assert cancelled.chunks[-1].finish_reason == "cancelled" and cancelled.chunks[-1].completion_tokens < 40
    assert [kept.text, *(sink.text for sink in sinks)] == alone
    assert kept.chunks[-1].completion_tokens == 40
    assert engine.stats.kv_blocks_used == 0


def test_sequences_ending_at_different_steps_leave_their_neighbours_unchanged(engine, prompts):
    """More requests than slots, ending after 1, 3, ... tokens or at a stop string: slots are freed and
    refilled while later steps are already launched, and every answer is still the one it gets alone."""
    full = run(engine, prompts, [request("Tell me a story.", max_tokens=20, ignore_eos=True)])[0].text
    specs = [dict(text="hi", max_tokens=1), dict(text="Tell me a story.", max_tokens=20, stop=[full[6:9]]),
             dict(text="Count.", max_tokens=3, ignore_eos=True), *REQUESTS[:3],
             dict(text="Go on.", max_tokens=25, ignore_eos=True)]
    requests = [request(**r) for r in specs]
    alone = [run(engine, prompts, [r])[0] for r in requests]
    together = run(engine, prompts, requests)
    assert [s.text for s in together] == [s.text for s in alone]
    assert [s.chunks[-1].completion_tokens for s in together] == [s.chunks[-1].completion_tokens for s in alone]
    assert together[0].chunks[-1].completion_tokens == 1 and together[1].chunks[-1].finish_reason == "stop"
    assert engine.in_flight == 0


def test_greedy_output_equals_transformers_generate(engine, prompts, loaded):
    _, model = loaded
    for spec in REQUESTS[:3]:
        r = request(**spec)
        expected = generate(model, prompts.build(r), r.sampling.max_tokens)
        assert run(engine, prompts, [r])[0].text == expected


def test_a_failed_graph_capture_costs_speed_not_answers(engine, prompts, loaded, caplog):
    """A capture can fail on a GPU (a CUDA call from another thread invalidates it); here the capture
    fails for real, for want of a GPU. The engine decodes without graphs from then on."""
    config, model = loaded
    capturing = Engine(model, config)
    capturing.runner.graphs = {}
    capturing.start()
    try:
        batch = [request(**spec) for spec in REQUESTS[:2]]
        got = run(capturing, prompts, batch)
        assert capturing.runner.graphs is None
        assert "run without CUDA graphs" in caplog.text
        assert [s.text for s in got] == [s.text for s in run(engine, prompts, batch)]
        assert all(s.error is None for s in got)
    finally:
        capturing.stop()


def test_streamed_deltas_join_to_the_whole_answer(engine, prompts):
    streamed = run(engine, prompts, [request("Tell me a story.", max_tokens=24)])[0]
    whole = run(engine, prompts, [request("Tell me a story.", max_tokens=24, stream=False)])[0]
    assert len(streamed.chunks) > 2 and len(whole.chunks) == 1
    assert streamed.text == whole.text
    last = streamed.chunks[-1]
    assert (last.finish_reason, last.completion_tokens) == ("length", 24)
    assert last.prompt_tokens == prompts.build(request("Tell me a story.")).length


def test_a_slow_connection_gets_fewer_larger_deltas_with_the_same_text(engine, prompts):
    spec = dict(text="Tell me a story.", max_tokens=40, ignore_eos=True)
    fast = run(engine, prompts, [request(**spec)])[0]
    slow = run(engine, prompts, [request(**spec)], [SlowSink()])[0]
    assert slow.text == fast.text
    assert 1 < len(slow.chunks) < len(fast.chunks) / 2
    assert slow.chunks[-1].completion_tokens == 40


def test_max_tokens_bounds_the_answer(engine, prompts):
    sink = run(engine, prompts, [request("Count.", max_tokens=5, ignore_eos=True)])[0]
    assert sink.chunks[-1].completion_tokens == 5 and sink.chunks[-1].finish_reason == "length"


def test_a_stop_string_ends_the_answer_before_it(engine, prompts):
    full = run(engine, prompts, [request("Describe this picture.", images=(png(64, 48),), max_tokens=30)])[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3
    stopped = run(engine, prompts, [request("Describe this picture.", images=(png(64, 48),), max_tokens=30,
                                            stop=[stop])])[0]
    assert stopped.text == full[: full.index(stop)]
    assert stopped.chunks[-1].finish_reason == "stop"


def test_a_seed_makes_sampling_reproducible_in_any_batch(engine, prompts):
    seeded = dict(text="Say something.", max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    alone = run(engine, prompts, [request(**seeded)])[0].text
    neighbours = [request(**seeded)] + [request(**r) for r in REQUESTS[:2]]
    assert run(engine, prompts, neighbours)[0].text == alone
    other = run(engine, prompts, [request(**{**seeded, "seed": 99})])[0].text
    assert other != alone


def test_a_cancelled_sequence_stops_and_frees_its_slot(engine, prompts):
    sink = Sink(cancel_after=2)
    run(engine, prompts, [request("Go on forever.", max_tokens=100, ignore_eos=True)], [sink])
    assert sink.chunks[-1].completion_tokens < 100
    deadline = time.monotonic() + 5
    while engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.in_flight == 0


def test_a_prompt_over_the_context_is_refused(engine, prompts):
    r = request("word " * 370, max_tokens=200)
    with pytest.raises(LimitExceeded, match="exceeds the context of 512 tokens"):
        engine.submit(r, prompts.build(r), Sink())


def test_a_full_engine_applies_backpressure(loaded, prompts):
    """One sequence runs, one more may wait inside the engine; the next caller waits for room (in
    Triton, that keeps it in Triton's queue) and gives up at its timeout."""
    config, model = loaded
    small = Engine(model, EngineConfig(model_path=config.model_path, max_num_seqs=1, max_model_len=512)).start()
    try:
        first, second = Sink(), Sink()
        r = request("Keep going.", max_tokens=60, ignore_eos=True)
        small.submit(r, prompts.build(r), first)
        small.submit(r, prompts.build(r), second)
        with pytest.raises(Overloaded):
            small.submit(r, prompts.build(r), Sink(), timeout=0.01)
        assert first.done.wait(60) and second.done.wait(60)
        assert [s.chunks[-1].completion_tokens for s in (first, second)] == [60, 60]
        assert second.text == first.text
    finally:
        small.stop()


def test_a_memory_budget_sizes_the_cache_in_blocks(loaded):
    config, model = loaded
    # Tiny model: 2 layers x 16 tokens x 2 KV heads x 16 dims x 2 (K, V) x 4 bytes = 8 KiB per block;
    # a sequence of 512 tokens takes 32 blocks.
    budget = EngineConfig(model_path=config.model_path, max_model_len=512, kv_cache_budget_gib=100 * 8 / 2**20)
    engine = Engine(model, budget).start()
    try:
        assert engine.stats.kv_blocks_total == 100
    finally:
        engine.stop()
    with pytest.raises(ValueError, match="cannot hold one sequence of max_model_len=512 tokens"):
        Engine(model, dataclasses.replace(budget, kv_cache_budget_gib=31 * 8 / 2**20)).start()
