"""A chat through the real Triton: each turn resends the whole conversation, and the model prefills only
what is new and processes and encodes the image once (its metrics say so), with the answers a server
without the prefix cache, the processor cache and the encoder cache gives."""

from __future__ import annotations

import pytest
from backend_samples import png
from triton_metrics import scrape, scrape_until

from clients.triton_stream import build_inputs, stream

pytestmark = pytest.mark.integration

BLOCK = 16  # the engine's default block size: the cache holds whole blocks
QUESTIONS = ["Describe this picture.", "What colour is it mostly?", "Give it a short title."]


COUNTERS = ("qwen3vl_prompt_tokens_total", "qwen3vl_prompt_tokens_cached_total",
            "qwen3vl_processor_cache_hits_total", "qwen3vl_processor_cache_misses_total",
            "qwen3vl_encoder_cache_hits_total", "qwen3vl_encoder_cache_misses_total")


def chat(server, image: bytes) -> list[tuple[str, int, float, float, float, float]]:
    """Three turns; per turn the answer, its prompt tokens, the prompt tokens prefilled and taken from
    the cache, the images taken from the processor cache and processed, and the images' encodings
    reused and computed (from the model's counters)."""
    history, turns = [], []
    for k, question in enumerate(QUESTIONS):
        content = ([{"type": "image", "image": 0}] if k == 0 else []) + [{"type": "text", "text": question}]
        messages = [*history, {"role": "user", "content": content}]
        before = scrape(server.metrics_url)
        result = stream(server.grpc_url, build_inputs(messages, [image], max_tokens=12))
        assert result.error is None
        after = scrape_until(server.metrics_url, lambda m: m["qwen3vl_sequences_in_flight"] == 0 and m.get(
            "qwen3vl_prompt_tokens_total", 0) > before.get("qwen3vl_prompt_tokens_total", 0))
        turns.append((result.text, result.prompt_tokens,
                      *(after.get(name, 0) - before.get(name, 0) for name in COUNTERS)))
        history = [*messages, {"role": "assistant", "content": result.text}]
    return turns


def test_a_three_turn_chat_with_an_image_prefills_only_the_new_tokens_of_each_turn(triton, start_triton):
    image = png(256, 256, (30, 160, 90))
    cold = start_triton(parameters={"enable_prefix_caching": "false", "processor_cache_gib": "0",
                                    "encoder_cache_gib": "0"})
    try:
        expected = chat(cold, image)
    finally:
        cold.stop()
    turns = chat(triton, image)
    assert [t[0] for t in turns] == [t[0] for t in expected]  # the same answers as without the caches
    assert all(prefilled == length for _, length, prefilled, *_ in expected)
    assert [t[4:] for t in expected] == [(0, 1, 0, 1)] * 3  # processed and encoded every turn
    # Processed once; encoded once, and not needed again: the turns after take its tokens from the cache.
    assert [t[4:] for t in turns] == [(0, 1, 0, 1), (1, 0, 0, 0), (1, 0, 0, 0)]
    for (_, before, *_), (_, length, prefilled, cached, *_) in zip(turns, turns[1:]):
        # Everything of the turn before (its prompt, image included) comes from the cache, but for the
        # block that holds its last tokens; what is prefilled is what this turn adds, and that block.
        assert cached >= before // BLOCK * BLOCK
        assert prefilled == length - cached and prefilled <= length - before + BLOCK
