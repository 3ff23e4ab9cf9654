"""The scheduler and its block manager alone, on hand-made sequences: no model, no device."""

from __future__ import annotations

import pytest
import torch

from backend_python.block_manager import BlockManager, block_hashes
from backend_python.config import EngineConfig
from backend_python.prompt import Prompt, VisualSpan
from backend_python.request import SamplingParams
from backend_python.scheduler import Scheduler
from backend_python.sequence import Sequence

pytestmark = pytest.mark.unit


class _Request:
    def __init__(self, max_tokens):
        self.sampling = SamplingParams(max_tokens=max_tokens)


def sequence(tokens: list[int], max_tokens: int = 8, images=()) -> Sequence:
    ids = torch.tensor(tokens)
    prompt = Prompt(input_ids=ids, mm_token_type_ids=torch.zeros_like(ids), pixel_values=None, image_grid_thw=None,
                    positions=torch.arange(len(tokens)).expand(3, -1), visuals=tuple(images))
    return Sequence(request=_Request(max_tokens), prompt=prompt, sink=None, text=None, seed=0)


def config(**overrides) -> EngineConfig:
    return EngineConfig(**{"model_path": "x", "max_num_seqs": 4, "max_model_len": 64, "block_size": 4,
                           "max_num_batched_tokens": 8, **overrides})


def launch(plan):
    """What the model runner does to a sequence at launch: the prompt's last chunk samples a token."""
    for chunk in plan.prefill:
        if chunk.last:
            chunk.seq.scheduled += 1


def test_block_hashes_chain_tokens_and_image_content():
    image_a = VisualSpan(start=5, end=7, pixel_start=0, pixel_end=8, digest=b"a" * 16, grid=(1, 2, 4))
    image_b = VisualSpan(start=5, end=7, pixel_start=0, pixel_end=8, digest=b"b" * 16, grid=(1, 2, 4))
    tokens = list(range(12))
    a, b = block_hashes(tokens, [image_a], 4), block_hashes(tokens, [image_b], 4)
    assert len(a) == 3 and a[0] == b[0] and a[1] != b[1] and a[2] != b[2]  # blocks from the image on differ
    assert block_hashes(tokens + [99], [image_a], 4, known=a[:1]) == a  # continuing the chain gives the same
    assert block_hashes([7] + tokens[1:], [image_a], 4)[2] != a[2]  # a block's hash covers all before it


def test_freed_blocks_stay_cached_until_evicted_least_recently_used_first():
    blocks = BlockManager(num_blocks=4, block_size=4)
    first, second = blocks.allocate(2), blocks.allocate(2)
    blocks.register(first, [b"h1", b"h2"])
    blocks.register(second, [b"h3", b"h4"])
    blocks.release(first)
    blocks.release(second)
    assert blocks.free == 4 and blocks.cached_prefix([b"h1", b"h2", b"h5"]) == first
    blocks.allocate(2)  # evicts the first sequence's (least recently used), last block first
    assert blocks.cached_prefix([b"h1"]) == [] and blocks.cached_prefix([b"h3", b"h4"]) == second


def test_a_long_prompt_is_prefilled_in_chunks_beside_the_decoding_sequences():
    scheduler = Scheduler(config(), num_blocks=32)
    short, long = sequence([1, 2, 3]), sequence(list(range(10, 30)))
    scheduler.add(short)
    plan = scheduler.schedule()
    launch(plan)
    assert [(c.seq, c.start, c.end, c.last) for c in plan.prefill] == [(short, 0, 3, True)]
    scheduler.add(long)
    steps = []
    while long.prefilling or not steps:
        plan = scheduler.schedule()
        launch(plan)
        rows = scheduler.decode()
        steps.append(([(c.start, c.end) for c in plan.prefill], rows.lengths))
    # 8 tokens a step: the decoding sequence's one, then seven of the prompt; it decodes in every step.
    assert steps == [([(0, 7)], [3]), ([(7, 14)], [4]), ([(14, 20)], [5, 20])]


def test_the_newest_sequence_is_preempted_when_decoding_outgrows_the_pool():
    scheduler = Scheduler(config(max_num_batched_tokens=16), num_blocks=6)  # 24 tokens
    old, new = sequence([1, 2, 3], max_tokens=20), sequence([4, 5, 6], max_tokens=20)
    scheduler.add(old)
    scheduler.add(new)
    preempted = []
    for _ in range(12):
        plan = scheduler.schedule()
        launch(plan)
        preempted += plan.preempted
        rows = scheduler.decode()
        for seq in rows.seqs:
            seq.scheduled += 1
            seq.tokens.append(0)
    assert preempted and set(preempted) == {new}
    assert old in scheduler.running and old.computed == 3 + 12 and new in scheduler.waiting
    scheduler.finish(old)
    plan = scheduler.schedule()
    # Readmitted, it is prefilled again with the answer it has so far, from the full blocks it had
    # (cached when it was preempted, and not evicted since).
    assert plan.admitted == [new] and new.target == len(new.tokens) > 3 and new.cached == 8
    assert scheduler.blocks.used == scheduler.blocks.blocks_for(new.computed + 1)


def test_admission_waits_for_the_blocks_a_prompt_needs_and_the_caller_for_room():
    scheduler = Scheduler(config(), num_blocks=8)  # 32 tokens
    running, waiting = sequence(list(range(20))), sequence(list(range(100, 112)))
    scheduler.add(running)
    launch(scheduler.schedule())  # 8 tokens of 20 prefilled; 6 blocks promised to it in all
    scheduler.add(waiting)
    plan = scheduler.schedule()
    assert waiting not in plan.admitted and scheduler.waiting[0] is waiting
    assert not scheduler.has_room(4)  # one already waits and would not fit beside another
    scheduler.finish(running)
    assert scheduler.schedule().admitted == [waiting]


def _chunks_beside_a_decoding_sequence(scheduler: Scheduler, prompt_tokens: int) -> list[tuple[int, int]]:
    """A one-token prompt decodes; then a long prompt arrives: its chunks, step by step."""
    short, long = sequence([1]), sequence(list(range(10, 10 + prompt_tokens)), max_tokens=64)
    scheduler.add(short)
    launch(scheduler.schedule())
    scheduler.add(long)
    chunks = []
    while long.prefilling or not chunks:
        plan = scheduler.schedule()
        launch(plan)
        assert scheduler.decode().seqs == [short] + ([long] if not long.prefilling else [])
        chunks += [(c.start, c.end) for c in plan.prefill]
    return chunks


def test_while_others_decode_a_prompts_chunk_is_capped_and_alone_it_takes_the_whole_budget():
    capped = Scheduler(config(max_num_batched_tokens=32, max_model_len=128, long_prefill_token_threshold=8),
                       num_blocks=64)
    assert _chunks_beside_a_decoding_sequence(capped, 30) == [(0, 8), (8, 16), (16, 24), (24, 30)]
    alone = Scheduler(config(max_num_batched_tokens=32, max_model_len=128, long_prefill_token_threshold=8),
                      num_blocks=64)
    alone.add(sequence(list(range(30))))
    assert [(c.start, c.end) for c in alone.schedule().prefill] == [(0, 30)]


def test_only_a_large_chunk_or_one_deep_in_a_long_prompt_is_paced_beside_decoding_streams():
    from backend_python.model_runner import device_bound
    from backend_python.scheduler import Chunk

    def chunks(*spans: tuple[int, int]) -> list[Chunk]:
        return [Chunk(sequence([1] * end), start, end, last=False) for start, end in spans]

    assert device_bound(chunks((0, 2048)))  # a long prompt's first chunk of 2,048
    assert device_bound(chunks((30_720, 32_768)))
    assert device_bound(chunks((3072, 4096)))  # 1,024 tokens deep enough
    assert not device_bound(chunks((0, 1024)))  # a prompt of 1,024 tokens alone
    assert not device_bound(chunks((32_000, 32_030)))  # a chat's next turn after a long cached history
    assert not device_bound(chunks(*[(0, 230)] * 35))  # a burst of image prompts, 8,050 tokens
