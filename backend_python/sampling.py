"""Token selection on the device: greedy, temperature and top-p, reproducible per request.

Random numbers come from a counter-based hash of (seed, step, token id), not from
a shared generator, so a seeded request samples the same tokens whatever else
runs in its batch, and the whole step stays a handful of vectorized kernels.
"""

from __future__ import annotations

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def uniform(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, vocab) floats in (0, 1), a pure function of each row's seed and step (SplitMix64)."""
    index = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    x = (seeds * _GOLDEN + steps * _MIX2)[:, None] + index[None, :] * _GOLDEN
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _MIX1
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _MIX2
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    bits = (x >> 40) & 0xFFFFFF
    return (bits.to(torch.float32) + 0.5) / float(1 << 24)


def select(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    any_sampling: bool,
    any_top_p: bool,
) -> torch.Tensor:
    """Next token per row. Rows with temperature 0 take the argmax."""
    greedy = torch.argmax(logits, dim=-1)
    if not any_sampling:
        return greedy
    scaled = logits.float() / torch.where(temperature > 0, temperature, 1.0)[:, None]
    if any_top_p:
        scaled = _nucleus(scaled, top_p)
    gumbel = -torch.log(-torch.log(uniform(seeds, steps, logits.shape[-1])))
    sampled = torch.argmax(scaled + gumbel, dim=-1)
    return torch.where(temperature > 0, sampled, greedy)


def _nucleus(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p; the first always stays."""
    ordered, order = torch.sort(scaled, dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs
    drop = before >= top_p[:, None]
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.empty_like(scaled).scatter_(-1, order, ordered)
