"""Decode attention over the slot cache on a GPU: each sequence reads only its own keys.

Scaled-dot-product attention over a padded batch reads every row's cache up to the
longest one (the engine rounds that span up, so captured graphs can be reused); at 64
sequences that read is a third of a decode step. These two OpenAI Triton kernels split
each sequence's cache into chunks (flash-decoding), skip the chunks past its length and
merge the partial softmaxes, so a step reads what the sequences hold and nothing more,
with a launch grid that does not depend on lengths (one captured graph per batch size).

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
    chunk: int  # cached tokens per program
    block: int  # cached tokens per inner step
    warps: int
    stages: int


# Measured on an H100 (36 layers, 230-742 cached tokens per row, every configuration swept): from 32
# rows on, fewer and longer programs read the cache faster (64 rows: 2.27 instead of 2.65 ms per
# step, 128 rows: 3.75 instead of 4.79, 32 rows: even); with fewer rows they leave
# most of the GPU idle (one row: 0.88 instead of 0.38 ms). Each captured graph has one batch size,
# so it has one launch shape.
SMALL = Launch(chunk=256, block=64, warps=4, stages=3)
LARGE = Launch(chunk=512, block=32, warps=2, stages=3)
LARGE_FROM_ROWS = 32


def launch_for(rows: int) -> Launch:
    return LARGE if rows >= LARGE_FROM_ROWS else SMALL


@triton.jit
def _partial(q_ptr, k_new_ptr, v_new_ptr, k_ptr, v_ptr, lengths_ptr, acc_ptr, stats_ptr,
             q_row, q_head, k_new_row, k_new_head, v_new_row, v_new_head, k_slot, k_head, v_slot, v_head, scale_log2,
             SPLITS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr,
             CHUNK: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """One (sequence, key/value head, chunk): unnormalised output and running max and sum.

    The step's own key and value come in registers: the program whose chunk holds their position
    uses them from there and writes them into the cache (no separate cache-write kernels).
    """
    row, head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    new = tl.load(lengths_ptr + row).to(tl.int32)  # the step's own token goes at this index
    n = new + 1
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM)
    start = split * CHUNK
    mine = (new >= start) & (new < start + CHUNK)
    k_new = tl.load(k_new_ptr + row * k_new_row + head * k_new_head + d)
    v_new = tl.load(v_new_ptr + row * v_new_row + head * v_new_head + d)
    k_base = k_ptr + row * k_slot + head * k_head
    v_base = v_ptr + row * v_slot + head * v_head
    tl.store(k_base + new * DIM + d, k_new, mask=mine & (d < DIM))
    tl.store(v_base + new * DIM + d, v_new, mask=mine & (d < DIM))
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
    for offset in range(start, tl.minimum(start + CHUNK, n), BLOCK):
        # Loaded here, not once above: most programs lie past their sequence's length and read nothing.
        q = tl.load(q_ptr + row * q_row + head * q_head + g[:, None] * DIM + d[None, :],
                    mask=g[:, None] < GROUP, other=0.0)
        t = offset + tl.arange(0, BLOCK)
        old = t < new
        this = (t == new)[:, None]
        k = tl.load(k_base + t[:, None] * DIM + d[None, :], mask=old[:, None], other=0.0)
        k = tl.where(this, k_new[None, :], k)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where((t < n)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        total = total * alpha + tl.sum(p, 1)
        v = tl.load(v_base + t[:, None] * DIM + d[None, :], mask=old[:, None], other=0.0)
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
           SPLITS: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr, CHUNK: tl.constexpr):
    """One (sequence, key/value head): the softmax over all its chunks, from their partials."""
    row, head = tl.program_id(0), tl.program_id(1)
    n = tl.load(lengths_ptr + row).to(tl.int32) + 1
    g = tl.arange(0, GROUP)
    d = tl.arange(0, DIM)
    m = tl.full([GROUP], float("-inf"), tl.float32)
    total = tl.zeros([GROUP], tl.float32)
    acc = tl.zeros([GROUP, DIM], tl.float32)
    first = (row * tl.num_programs(1) + head) * SPLITS
    for split in range(0, tl.cdiv(n, CHUNK)):
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


def decode_attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keys: torch.Tensor,
                     values: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """Write one new token per row into the cache and attend over the row's cache, that token included.

    ``q``: (rows, kv_heads, group, dim), the query heads of each key/value head together;
    ``key``/``value``: (rows, kv_heads, 1, dim), this step's; ``keys``/``values``: (slots, kv_heads,
    max_len, dim), row i in slot i; ``lengths``: (rows,) tokens cached before this step (the new one
    goes at that index). Returns q's shape.
    """
    rows, kv_heads, group, dim = q.shape
    if any(t.stride(-1) != 1 for t in (q, key, value, keys, values)) or q.stride(2) != dim \
            or keys.stride(2) != dim or values.stride(2) != dim:
        raise ValueError("decode_attention needs rows of contiguous head dimensions")
    if group & (group - 1) or dim & (dim - 1):
        raise ValueError(f"decode_attention needs power-of-two group and head sizes, got {group} and {dim}")
    shape = launch_for(rows)
    splits = triton.cdiv(keys.shape[2], shape.chunk)
    acc = torch.empty((rows, kv_heads, splits, group, dim), dtype=torch.float32, device=q.device)
    stats = torch.empty((rows, kv_heads, splits, 2, group), dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    _partial[(rows, kv_heads, splits)](
        q, key, value, keys, values, lengths, acc, stats, q.stride(0), q.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        keys.stride(0), keys.stride(1), values.stride(0), values.stride(1), scale * math.log2(math.e),
        SPLITS=splits, GROUP=group, GROUP_PAD=max(16, group), DIM=dim, CHUNK=shape.chunk,
        BLOCK=shape.block, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=shape.warps,
        num_stages=shape.stages)
    _merge[(rows, kv_heads)](acc, stats, lengths, out, out.stride(0), out.stride(1),
                             SPLITS=splits, GROUP=group, DIM=dim, CHUNK=shape.chunk)
    return out


# Triton compiles these at a start: the engine's compile artifacts carry them (compile_artifacts.py).
KERNELS = (_partial.__name__, _merge.__name__)
