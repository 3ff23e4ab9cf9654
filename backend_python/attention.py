"""Decode attention over the paged KV cache on a GPU: each sequence reads only its own blocks.

Two OpenAI Triton kernels split each sequence's cached tokens into chunks
(flash-decoding), follow the sequence's block table to find them, and merge the
partial softmaxes. The launch grid is fixed for a batch size (sequences x KV heads x
``splits``) whatever the lengths, so one captured graph per batch size serves every
step: a chunk is at least ``min_chunk`` tokens and grows with the length so that at most
``splits`` of them cover it (a 300-token answer and a 100,000-token document alike).

The query heads that share a key/value head are computed together: keys and values
are read once per group, never repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class Launch:
    min_chunk: int  # cached tokens per program, at least
    splits: int  # programs per (sequence, KV head), at most
    block: int  # cached tokens per inner step (at most the cache's block size)
    warps: int
    stages: int


# By batch size (the first of each range), measured on an H200 with bench/kernels.py (36 layers, 512 and
# 1,024 cached tokens per row, 64-token blocks, ms per step): one row wants many short programs to fill
# the GPU (0.34 / 0.37, against 0.47 / 0.51 with twice the chunk); from 4 rows chunks of 256 in at most 16
# splits (8 rows 0.59 / 0.72, 16 rows 0.79 / 1.18); from 32, chunks of 512 and tiles of 32 (48 rows 1.71
# / 2.22, 128 rows 3.52 / 5.55). Those were timed with 3 stages, which the block-id load cost a stage of:
# Triton then kept one tile of keys and values in flight, not two as the slot engine's kernel (compiled
# for sm_90: tests/unit/backend/test_backend_attention.py). Each captured graph has one batch size, so it
# has one launch shape.
LAUNCHES = (
    (1, Launch(min_chunk=128, splits=64, block=64, warps=4, stages=5)),
    (4, Launch(min_chunk=256, splits=16, block=64, warps=4, stages=5)),
    (32, Launch(min_chunk=512, splits=8, block=32, warps=2, stages=5)),
)


def launch_for(rows: int) -> Launch:
    return next(launch for first, launch in reversed(LAUNCHES) if rows >= first)


def tile_for(launch: Launch, page: int) -> int:
    """Cached tokens per inner step: a tile lies inside one cache block, whose id is read once for it."""
    return min(launch.block, page)


def chunk_for(length: int, launch: Launch, page: int) -> int:
    """Cached tokens per program for a sequence of ``length`` (the kernels compute the same)."""
    block = tile_for(launch, page)
    per_split = -(-length // launch.splits)
    return max(launch.min_chunk, -(-per_split // block) * block)


@triton.jit
def _chunk(n, SPLITS: tl.constexpr, MIN_CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    return tl.maximum(MIN_CHUNK, tl.cdiv(tl.cdiv(n, SPLITS), BLOCK) * BLOCK)


@triton.jit
def _offset(table, position, pool_block, pool_token, pool_head, head, PAGE: tl.constexpr, WIDE: tl.constexpr):
    """Where ``position`` of the sequence whose block ids are at ``table`` keeps ``head``'s key (and value)."""
    page = tl.load(table + position // PAGE)
    if WIDE:  # offsets past 2**31 elements; narrower ones cost less arithmetic per loaded element
        page = page.to(tl.int64)
    return page * pool_block + (position % PAGE) * pool_token + head * pool_head


@triton.jit
def _partial(q_ptr, k_new_ptr, v_new_ptr, k_ptr, v_ptr, lengths_ptr, slots_ptr, tables_ptr, acc_ptr, stats_ptr,
             q_row, q_head, k_new_row, k_new_head, v_new_row, v_new_head, table_row, pool_block, pool_token,
             pool_head, scale_log2, SPLITS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
             DIM: tl.constexpr, PAGE: tl.constexpr, MIN_CHUNK: tl.constexpr, BLOCK: tl.constexpr,
             WIDE: tl.constexpr, PRECISION: tl.constexpr):
    """One (sequence, key/value head, chunk): unnormalised output and running max and sum.

    The step's own key and value come in registers: the chunk holding their position uses them from
    there, and the first chunk writes them into the cache (no separate cache-write kernels).
    """
    row, head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    new = tl.load(lengths_ptr + row).to(tl.int32)  # the step's own token goes at this position
    n = new + 1
    table = tables_ptr + tl.load(slots_ptr + row).to(tl.int64) * table_row
    chunk = _chunk(n, SPLITS, MIN_CHUNK, BLOCK)
    start = split * chunk
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM)
    i = tl.arange(0, BLOCK)
    k_new = tl.load(k_new_ptr + row * k_new_row + head * k_new_head + d)
    v_new = tl.load(v_new_ptr + row * v_new_row + head * v_new_head + d)
    at = _offset(table, new, pool_block, pool_token, pool_head, head, PAGE, WIDE)
    tl.store(k_ptr + at + d, k_new, mask=(split == 0) & (d < DIM))
    tl.store(v_ptr + at + d, v_new, mask=(split == 0) & (d < DIM))
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
    q = tl.load(q_ptr + row * q_row + head * q_head + g[:, None] * DIM + d[None, :], mask=g[:, None] < GROUP,
                other=0.0)
    for offset in range(start, tl.minimum(start + chunk, n), BLOCK):
        t = offset + i
        old = t < new
        this = (t == new)[:, None]
        # The tile lies inside one block: one block-id load for it. A block id per token (a gather) made
        # the kernel a quarter slower than the slot engine's, which read one contiguous line per sequence.
        where = _offset(table, offset, pool_block, pool_token, pool_head, head, PAGE, WIDE) \
            + i[:, None] * pool_token + d[None, :]
        k = tl.load(k_ptr + where, mask=old[:, None], other=0.0)
        k = tl.where(this, k_new[None, :], k)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where((t < n)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        total = total * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + where, mask=old[:, None], other=0.0)
        v = tl.where(this, v_new[None, :], v)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    part = (row * tl.num_programs(1) + head) * SPLITS + split
    keep = (g < GROUP) & (start < n)  # chunks past the length are never merged: nothing to write
    tl.store(acc_ptr + part * GROUP * DIM + g[:, None] * DIM + d[None, :], acc, mask=keep[:, None])
    tl.store(stats_ptr + (part * 2) * GROUP + g, m, mask=keep)
    tl.store(stats_ptr + (part * 2 + 1) * GROUP + g, total, mask=keep)


@triton.jit
def _merge(acc_ptr, stats_ptr, lengths_ptr, out_ptr, out_row, out_head,
           SPLITS: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr, MIN_CHUNK: tl.constexpr,
           BLOCK: tl.constexpr):
    """One (sequence, key/value head): the softmax over all its chunks, from their partials."""
    row, head = tl.program_id(0), tl.program_id(1)
    n = tl.load(lengths_ptr + row).to(tl.int32) + 1
    chunk = _chunk(n, SPLITS, MIN_CHUNK, BLOCK)
    g = tl.arange(0, GROUP)
    d = tl.arange(0, DIM)
    m = tl.full([GROUP], float("-inf"), tl.float32)
    total = tl.zeros([GROUP], tl.float32)
    acc = tl.zeros([GROUP, DIM], tl.float32)
    first = (row * tl.num_programs(1) + head) * SPLITS
    for split in range(0, tl.cdiv(n, chunk)):
        part = first + split
        m_s = tl.load(stats_ptr + (part * 2) * GROUP + g)
        total_s = tl.load(stats_ptr + (part * 2 + 1) * GROUP + g)
        acc_s = tl.load(acc_ptr + part * GROUP * DIM + g[:, None] * DIM + d[None, :])
        m_new = tl.maximum(m, m_s)
        alpha, beta = tl.exp2(m - m_new), tl.exp2(m_s - m_new)
        total = total * alpha + total_s * beta
        acc = acc * alpha[:, None] + acc_s * beta[:, None]
        m = m_new
    out = acc / total[:, None]
    tl.store(out_ptr + row * out_row + head * out_head + g[:, None] * DIM + d[None, :], out.to(out_ptr.dtype.element_ty))


def check_block_size(block_size: int) -> None:
    """The kernels' tiles are a power of two of at least 16 tokens (tensor-core products) inside one block."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two of at least 16 for the GPU decode kernel, got "
                         f"{block_size}")


def decode_attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keys: torch.Tensor,
                     values: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor,
                     scale: float, launch: Launch | None = None) -> torch.Tensor:
    """Write one new token per row into the cache and attend over the row's cached tokens, that token included.

    ``q``: (rows, kv_heads, group, dim), the query heads of each key/value head together;
    ``key``/``value``: (rows, kv_heads, 1, dim), this step's; ``keys``/``values``: one layer's pool,
    indexed (block, position in block, kv_head, dim) with a contiguous last dimension (the cache's
    layout; a head-major pool reads no faster, bench/kernels.py); ``lengths``: (rows,) tokens cached
    before this step (the new one goes at that position); ``slots``: (rows,) each row's line of
    ``tables``, the block ids of its sequence; ``launch``: the shape measured fastest for this many rows
    unless given. Returns q's shape.
    """
    rows, kv_heads, group, dim = q.shape
    if any(t.stride(-1) != 1 for t in (q, key, value, keys, values)) or q.stride(2) != dim \
            or keys.stride() != values.stride() or tables.stride(1) != 1:
        raise ValueError("decode_attention needs contiguous head dimensions and key and value pools of one layout")
    if group & (group - 1) or dim & (dim - 1):
        raise ValueError(f"decode_attention needs power-of-two group and head sizes, got {group} and {dim}")
    check_block_size(keys.shape[1])
    shape = launch or launch_for(rows)
    block = tile_for(shape, keys.shape[1])
    acc = torch.empty((rows, kv_heads, shape.splits, group, dim), dtype=torch.float32, device=q.device)
    stats = torch.empty((rows, kv_heads, shape.splits, 2, group), dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    _partial[(rows, kv_heads, shape.splits)](
        q, key, value, keys, values, lengths, slots, tables, acc, stats, q.stride(0), q.stride(1), key.stride(0),
        key.stride(1), value.stride(0), value.stride(1), tables.stride(0), keys.stride(0), keys.stride(1),
        keys.stride(2), scale * math.log2(math.e), SPLITS=shape.splits, GROUP=group, GROUP_PAD=max(16, group),
        DIM=dim, PAGE=keys.shape[1], MIN_CHUNK=shape.min_chunk, BLOCK=block, WIDE=keys.numel() >= 2**31,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=shape.warps, num_stages=shape.stages)
    _merge[(rows, kv_heads)](acc, stats, lengths, out, out.stride(0), out.stride(1), SPLITS=shape.splits,
                             GROUP=group, DIM=dim, MIN_CHUNK=shape.min_chunk, BLOCK=block)
    return out


# Triton compiles these at a start: the engine's compile artifacts carry them (compile_artifacts.py).
KERNELS = (_partial.__name__, _merge.__name__)
