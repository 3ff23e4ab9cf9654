"""The paged engine on the tiny checkpoint with small blocks and a small step budget: prompts span many
blocks and several chunks, prefixes come from the cache, memory runs out. Every answer stays the one
the request gets alone (and, greedy, the one transformers' generate gives)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from backend_samples import Sink, generate, png, run, tensors, tiny_checkpoint, user

from backend_python.config import EngineConfig, Limits
from backend_python.engine import Engine
from backend_python.errors import LimitExceeded
from backend_python.loader import load
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest
from tests.samples import videos

pytestmark = pytest.mark.unit

BLOCK = 4
# Tiny model: 2 layers x 4 tokens x 2 KV heads x 16 dims x 2 (K, V) x 4 bytes = 2 KiB per block.
BLOCK_BYTES = 2 * 4 * 2 * 16 * 2 * 4


@pytest.fixture(scope="module")
def config():
    return EngineConfig(model_path=str(tiny_checkpoint()), max_num_seqs=4, max_model_len=256, block_size=BLOCK,
                        max_num_batched_tokens=16, limits=Limits(max_prompt_tokens=200, max_new_tokens=100),
                        image_min_pixels=32 * 32 * 4, image_max_pixels=128 * 128)


@pytest.fixture(scope="module")
def model(config):
    return load(config)


@pytest.fixture(scope="module")
def prompts(config, model):
    return PromptBuilder(model.processor, config)


@pytest.fixture(scope="module")
def video_prompts(config, model):
    sampling = dataclasses.replace(config, video_fps=2.0, video_min_pixels=4096, video_max_pixels=1_310_720)
    return PromptBuilder(model.processor, sampling)


@pytest.fixture
def engine(config, model):
    engine = Engine(model, config).start()
    yield engine
    engine.stop()


def request(text, images=(), messages=None, videos=(), **scalars):
    return GenerationRequest.from_tensors(tensors(messages or user(text, len(images)), images, videos, **scalars),
                                          Limits(max_new_tokens=200, default_max_tokens=16))



# 70-odd tokens with an image of 16 tokens in the middle: 18 blocks, five chunks of 16 tokens.
LONG = dict(messages=[{"role": "user", "content": [{"type": "text", "text": "word " * 25},
                                                   {"type": "image", "image": 0},
                                                   {"type": "text", "text": "and more words " * 8}]}],
            text="", images=(png(128, 128, (10, 120, 200)),), max_tokens=24)
SHORT = [dict(text="What is two plus two?", max_tokens=20), dict(text="hi", max_tokens=12),
         dict(text="Describe this picture.", images=(png(64, 48),), max_tokens=12)]


def test_a_prompt_over_many_blocks_and_chunks_with_an_image_across_chunks_equals_generate(engine, prompts, model):
    r = request(**LONG)
    prompt = prompts.build(r)
    image = prompt.visuals[0]
    assert prompt.length > 4 * 16 and image.start // 16 != (image.end - 1) // 16
    before = engine.stats.snapshot()
    assert run(engine, prompts, [r])[0].text == generate(model, prompt, 24)
    done = engine.stats.since(before)
    assert done["prefill_chunks"] == -(-prompt.length // 16) and done["cached_tokens"] == 0


def test_short_prompts_chunked_beside_a_long_one_and_decoding_through_its_prefill_get_their_answers_alone(
        engine, prompts, model):
    long, short = request(**LONG), [request(**s) for s in SHORT]
    alone = [run(engine, prompts, [r])[0].text for r in short]
    decoding = request("Tell me a story.", max_tokens=40, ignore_eos=True)
    decoding_alone = run(engine, prompts, [decoding])[0].text
    engine_long = Engine(model, dataclasses.replace(engine.config, enable_prefix_caching=False)).start()
    try:
        before = engine_long.stats.snapshot()
        got = run(engine_long, prompts, [decoding, long, *short])
        done = engine_long.stats.since(before)
    finally:
        engine_long.stop()
    assert [s.text for s in got[2:]] == alone
    assert got[0].text == decoding_alone and got[1].text == generate(model, prompts.build(long), 24)
    # The long prompt's chunks shared steps with the decode steps of the others.
    assert done["prefills"] >= 5 and done["decode_steps"] >= done["prefills"]


def test_a_prefix_cache_hit_answers_as_a_miss_does_and_the_next_turn_prefills_only_what_is_new(
        engine, prompts, model):
    image = (png(128, 128, (200, 30, 30)),)
    first = request("Describe this picture in detail, please.", images=image, max_tokens=16)
    before = engine.stats.snapshot()
    miss = run(engine, prompts, [first])[0]
    hit = run(engine, prompts, [first])[0]
    done = engine.stats.since(before)
    length = prompts.build(first).length
    assert hit.text == miss.text
    # The repeat takes every full block but the one holding its last token, which is computed again.
    assert done["cached_tokens"] == (length - 1) // BLOCK * BLOCK
    assert done["prompt_tokens"] == 2 * length - done["cached_tokens"]

    turn = [{"role": "user", "content": [{"type": "image", "image": 0},
                                         {"type": "text", "text": "Describe this picture in detail, please."}]},
            {"role": "assistant", "content": miss.text}, {"role": "user", "content": "And its colour?"}]
    second = request("", images=image, messages=turn, max_tokens=8)
    cold = Engine(model, dataclasses.replace(engine.config, enable_prefix_caching=False)).start()
    try:
        expected = run(cold, prompts, [second])[0].text
    finally:
        cold.stop()
    before = engine.stats.snapshot()
    assert run(engine, prompts, [second])[0].text == expected
    done = engine.stats.since(before)
    # The first turn's prompt and most of its answer come from the cache.
    assert done["cached_tokens"] >= length - BLOCK
    assert done["prompt_tokens"] < prompts.build(second).length - length + BLOCK


def test_the_same_text_with_another_image_shares_no_block_from_the_image_on(engine, prompts):
    text = "What is in this picture?"
    red, blue = request(text, images=(png(96, 96, (255, 0, 0)),)), request(text, images=(png(96, 96, (0, 0, 255)),))
    assert prompts.build(red).input_ids.tolist() == prompts.build(blue).input_ids.tolist()
    run(engine, prompts, [red])
    before = engine.stats.snapshot()
    run(engine, prompts, [blue])
    assert engine.stats.since(before)["cached_tokens"] <= prompts.build(blue).visuals[0].start


def test_an_image_shown_by_many_prompts_is_encoded_once_and_every_answer_stays_its_own(config, model, prompts):
    """Without the prefix cache every prompt's image tokens are prefilled; the encoder cache still runs each
    image through the vision encoder once, for the prompts prefilled beside it and for later ones."""
    red, blue = (png(96, 96, (255, 0, 0)),), (png(96, 96, (0, 0, 255)),)
    work = [request(q, images=red, max_tokens=8) for q in ("What is this?", "Describe it.", "Colours?")]
    work += [request("What is this?", images=blue, max_tokens=8), work[0]]
    uncached = Engine(model, dataclasses.replace(config, enable_prefix_caching=False, encoder_cache_gib=0)).start()
    try:
        alone = [run(uncached, prompts, [r])[0].text for r in work]
        assert uncached.stats.visuals_encoded == 5 and uncached.stats.visuals_from_cache == 0
    finally:
        uncached.stop()
    engine = Engine(model, dataclasses.replace(config, enable_prefix_caching=False)).start()
    try:
        got = [s.text for s in run(engine, prompts, work[:4])] + [run(engine, prompts, work[4:])[0].text]
        assert got == alone
        assert engine.stats.visuals_encoded == 2 and engine.stats.visuals_from_cache == 3
    finally:
        engine.stop()


def test_under_memory_pressure_every_request_completes_with_its_answer_alone(config, model, prompts):
    """A pool of 70 blocks (280 tokens) for four running sequences that grow to 100 tokens each, and more
    waiting: admission waits for blocks, the newest running sequence is preempted and recomputed later,
    cached blocks are evicted."""
    growing = [request(text, max_tokens=90, ignore_eos=True, temperature=0.8, seed=i)
               for i, text in enumerate(("Count to ten.", "Tell me a story.", "Go on.", "Keep going."))]
    requests = [*growing, request(**LONG), *(request(**s) for s in SHORT)]
    roomy = Engine(model, config).start()
    try:
        alone = [run(roomy, prompts, [r])[0].text for r in requests]
    finally:
        roomy.stop()
    small = Engine(model, dataclasses.replace(config, kv_cache_budget_gib=70 * BLOCK_BYTES / 2**30)).start()
    try:
        assert small.stats.kv_blocks_total == 70
        before = small.stats.snapshot()
        got = run(small, prompts, requests)
        done = small.stats.since(before)
        assert [s.text for s in got] == alone
        assert done["preemptions"] > 0
        assert small.stats.kv_blocks_used == 0 and small.in_flight == 0
    finally:
        small.stop()


def test_a_cancelled_sequence_gives_its_blocks_back(engine, prompts):
    sink = Sink(cancel_after=2)
    engine.submit(r := request("Go on forever.", max_tokens=100, ignore_eos=True), prompts.build(r), sink)
    assert sink.done.wait(60) and sink.chunks[-1].finish_reason == "cancelled"
    assert sink.chunks[-1].completion_tokens < 100
    run(engine, prompts, [request("hi", max_tokens=2)])  # a step after the cancel
    assert engine.stats.kv_blocks_used == 0 and engine.in_flight == 0


def test_a_request_over_the_context_is_refused_and_the_next_one_served(engine, prompts):
    with pytest.raises(LimitExceeded, match="exceeds the context of 256 tokens"):
        r = request("word " * 170, max_tokens=100)
        engine.submit(r, prompts.build(r), Sink())
    assert run(engine, prompts, [request("hi", max_tokens=4)])[0].chunks[-1].completion_tokens > 0


def test_a_prompt_cancelled_while_it_is_prefilled_in_chunks_stops_there(engine, prompts):
    """A long prompt is many steps of prefill: a client that goes away meanwhile ends it at once."""
    before = engine.stats.snapshot()

    class CancelledMidPrefill(Sink):
        def is_cancelled(self):
            return engine.stats.prefill_chunks - before.prefill_chunks >= 2

    r = request(**LONG)
    chunks = -(-prompts.build(r).length // 16)
    sink = CancelledMidPrefill()
    engine.submit(r, prompts.build(r), sink)
    assert sink.done.wait(60)
    assert sink.chunks[-1].finish_reason == "cancelled" and sink.chunks[-1].completion_tokens == 0
    assert 2 <= engine.stats.since(before)["prefill_chunks"] < chunks
    assert engine.stats.kv_blocks_used == 0 and engine.in_flight == 0


def watch(clip: bytes, question: str = "What moves?", max_tokens: int = 16):
    parts = [{"type": "text", "text": "Watch this:"}, {"type": "video", "video": 0}, {"type": "text", "text": question}]
    return request("", messages=[{"role": "user", "content": parts}], videos=(clip,), max_tokens=max_tokens)


def test_a_video_whose_frames_straddle_chunks_equals_generate(engine, video_prompts, model):
    r = watch(videos.clip(3.0, fps=10))
    prompt = video_prompts.build(r)
    assert len(prompt.visuals) == 3 and any(s.start // 16 != (s.end - 1) // 16 for s in prompt.visuals)
    got = run(engine, video_prompts, [r])[0]
    assert got.text == generate(model, prompt, 16)
    assert got.chunks[-1].visual_tokens == prompt.visual_tokens == 36


def test_a_video_and_an_image_beside_other_prompts_get_their_answers_alone(engine, video_prompts, model):
    parts = [{"type": "image", "image": 0}, {"type": "video", "video": 0}, {"type": "text", "text": "Same?"}]
    both = request("", images=(png(64, 48),), messages=[{"role": "user", "content": parts}],
                   videos=(videos.clip(2.0, fps=10, colour=(40, 200, 40)),), max_tokens=12)
    others = [request(**s) for s in SHORT]
    alone = [run(engine, video_prompts, [r])[0].text for r in others]
    got = run(engine, video_prompts, [others[0], both, *others[1:]])
    assert got[1].text == generate(model, video_prompts.build(both), 12)
    assert [got[0].text, *(s.text for s in got[2:])] == alone


def test_the_prefix_cache_keys_blocks_by_the_videos_content(engine, video_prompts):
    red, blue = watch(videos.clip(3.0, fps=10)), watch(videos.clip(3.0, fps=10, colour=(40, 40, 230)))
    assert video_prompts.build(red).input_ids.tolist() == video_prompts.build(blue).input_ids.tolist()
    before = engine.stats.snapshot()
    miss, hit = run(engine, video_prompts, [red])[0], run(engine, video_prompts, [red])[0]
    length = video_prompts.build(red).length
    assert hit.text == miss.text and engine.stats.since(before)["cached_tokens"] == (length - 1) // BLOCK * BLOCK
    before = engine.stats.snapshot()
    run(engine, video_prompts, [blue])
    assert engine.stats.since(before)["cached_tokens"] <= video_prompts.build(blue).visuals[0].start


def test_a_videos_frames_are_encoded_once_each_for_two_prompts_and_keep_their_order(config, model, video_prompts):
    """The encoder cache keys a video's features by its content and which temporal patch they are: its
    three patches have the same grid and digest, and taking one's features for another would change the
    answer."""
    r = watch(videos.clip(3.0, fps=10))
    engine = Engine(model, dataclasses.replace(config, enable_prefix_caching=False)).start()
    try:
        got = run(engine, video_prompts, [r, r])
        assert engine.stats.visuals_encoded == 3 and engine.stats.visuals_from_cache == 3
    finally:
        engine.stop()
    assert [s.text for s in got] == [generate(model, video_prompts.build(r), 16)] * 2


def test_prefills_padded_to_a_graph_bucket_give_the_answers_of_unpadded_ones(config, model, prompts):
    """The path a GPU replays as captured graphs (prefill_graphs.py), run directly here: each prefill of up
    to 40 tokens padded to a bucket (16, 32 or 40 tokens), the padding's keys and values sent to the spare
    block; larger prefills (the long prompt's first chunks) stay unpadded. A padding row written into a
    running sequence's blocks would change its answer."""
    work = [request("Tell me a story.", max_tokens=40, ignore_eos=True), request(**LONG),
            *(request(**s) for s in SHORT)]
    answers, done = {}, {}
    for tokens in (0, 40):
        engine = Engine(model, dataclasses.replace(config, max_num_batched_tokens=64, prefill_graph_tokens=tokens,
                                                   enable_prefix_caching=False)).start()
        try:
            before = engine.stats.snapshot()
            answers[tokens] = [s.text for s in run(engine, prompts, work)]
            done[tokens] = engine.stats.since(before)
            assert engine.stats.kv_blocks_used == 0
        finally:
            engine.stop()
    assert answers[40] == answers[0]
    assert done[0]["graphed_prefills"] == 0
    assert 0 < done[40]["graphed_prefills"] < done[40]["prefills"]
