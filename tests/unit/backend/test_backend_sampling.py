"""Sampling: greedy is argmax, top-p keeps the nucleus, and the random stream depends only on (seed, step)."""

import pytest
import torch

from backend_python.sampling import select, uniform

pytestmark = pytest.mark.unit


def test_uniform_numbers_are_in_range_and_reproducible():
    seeds, steps = torch.tensor([1, 2]), torch.tensor([0, 0])
    u = uniform(seeds, steps, 50_000)
    assert torch.equal(u, uniform(seeds, steps, 50_000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(u[0], u[1])


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    logits = torch.randn(3, 100)
    out = select(logits, torch.tensor([0.0, 1.0, 0.0]), torch.ones(3), torch.tensor([1, 2, 3]),
                 torch.zeros(3, dtype=torch.long), any_sampling=True, any_top_p=False)
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_top_p_samples_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    steps = torch.arange(400)
    out = select(logits, torch.ones(400), torch.full((400,), 0.7), torch.full((400,), 5), steps,
                 any_sampling=True, any_top_p=True)
    assert set(out.tolist()) == {0, 1}


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    n = 4000
    out = select(torch.log(probs).repeat(n, 1), torch.ones(n), torch.ones(n), torch.full((n,), 9),
                 torch.arange(n), any_sampling=True, any_top_p=False)
    freq = torch.bincount(out, minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=0.03)
