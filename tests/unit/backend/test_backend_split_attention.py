"""Attention of a prompt chunk after a long cached prefix, with the prefix cut in pieces that run side by
side (split-KV): the same answer as one attention call over the whole context, in the kernels' math and
in the engine's tokens."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from backend_samples import run, tiny_checkpoint
from test_backend_paged_engine import generate, request

from backend_python.config import EngineConfig, Limits
from backend_python.decode import (Context, Pieces, attention_after_prefix, packed_attention,
                                   split_attention_works, split_plan)
from backend_python.engine import Engine
from backend_python.loader import load
from backend_python.prompt import PromptBuilder

pytestmark = pytest.mark.unit


def test_a_short_chunk_after_a_long_prefix_is_cut_and_short_prefixes_are_not():
    # 100 queries (one thread block per head) after 33,000 tokens: 16 pieces; 1,024 queries: 2.
    rows, q_bounds, k_bounds = split_plan([0, 100, 1124], [33_000, 31_000])
    assert (len(q_bounds) - 1, q_bounds[16], k_bounds[16], k_bounds[-1]) == (18, 1600, 33_000, 64_000)
    assert rows[:100] == rows[100:200] == list(range(100)) and rows[-1024:] == list(range(100, 1124))
    assert split_plan([0, 31], [1088]) is None  # a chat's next turn: one call over its context
    assert split_plan([0, 2048], [30_000]) is None  # enough queries to fill the GPU alone


def test_attention_over_a_cut_prefix_equals_one_call_over_the_whole_context():
    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 16
    prefixes, lengths = [5000, 0, 3000], [37, 20, 300]  # cut, fresh, cut
    q_bounds = [0, 37, 57, 357]
    context = [torch.randn(p + n, kv_heads, 2, dim) for p, n in zip(prefixes, lengths)]
    keys, values = (torch.cat([c[:, :, i] for c in context]) for i in (0, 1))
    q = torch.randn(q_bounds[-1], heads, dim)
    ends = [0, 5037, 5057, 8357]
    whole = packed_attention(q, keys, values, q_bounds, None, 0, causal=True, context=Context(None, ends, None, 0))

    own = torch.cat([c[p:] for c, p in zip(context, prefixes)])
    before = torch.cat([c[:p] for c, p in zip(context, prefixes)])
    plan = split_plan(q_bounds, prefixes)
    assert plan is not None and len(plan[1]) - 1 == 3 + 2  # 3 and 2 pieces (at least 2,048 keys each)
    got = attention_after_prefix(q, own[:, :, 0], own[:, :, 1], before[:, :, 0], before[:, :, 1], q_bounds, None, 0,
                                 Pieces.of(plan, lambda t: t))
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
    assert split_attention_works(torch.device("cpu"), torch.float32, heads, kv_heads, dim)


def test_a_long_prompt_whose_chunks_read_a_cut_prefix_equals_generate():
    config = EngineConfig(model_path=str(tiny_checkpoint()), max_num_seqs=2, max_model_len=6000, block_size=16,
                          max_num_batched_tokens=512, limits=Limits(max_prompt_tokens=5600, max_new_tokens=16))
    model = load(config)
    prompts = PromptBuilder(model.processor, config, rope_index=model.model.model.get_rope_index)
    r = request("one two three four five six seven eight nine ten " * 500, max_tokens=12)
    prompt = prompts.build(r)
    # Chunks of 512 after 2,560 tokens and more are cut in pieces (the rest read their whole context).
    assert prompt.length > 5000 and split_plan([0, 512], [2560]) is not None
    engine = Engine(model, config).start()
    try:
        assert run(engine, prompts, [r])[0].text == generate(model, prompt, 12)
    finally:
        engine.stop()
    whole = Engine(model, dataclasses.replace(config, max_num_batched_tokens=6000)).start()
    try:
        assert run(whole, prompts, [r])[0].text == generate(model, prompt, 12)  # one chunk: no prefix at all
    finally:
        whole.stop()
