"""The pod model agrees with the real Triton: one pod, the same Poisson arrivals, three rates.

The profile is measured first against the same server with `planner.measure` (the command
that produced planner/profiles/cpu-tiny.json), and its decode step times are re-scaled by a
3-second re-measurement right before each rate: this 2-core machine is shared, so its speed
drifts, and the check is about the model (batching, slots, backpressure, bounded queue),
not about a stale measurement.

Tolerance (also in planner/README.md): throughput within 30 % (or 0.3 req/s); Triton's mean
queue time per request within 0.1 s below saturation, within 50 % or 0.5 s above it. The load
generator shares the two cores with Triton, which slows the real pod most when it is saturated.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from dataclasses import replace

from planner.measure import Client, measure_decode, measure_profile, run_load
from planner.pod import DONE
from planner.profile import load_profile
from planner.sim import Policy, simulate
from planner.traffic import Trace

pytestmark = pytest.mark.integration

SECONDS = 20.0
WORDS = 8
MAX_TOKENS = 32
SHIPPED = Path(__file__).resolve().parents[3] / "planner" / "profiles" / "cpu-tiny.json"


def arrivals(rps: float, seed: int) -> np.ndarray:
    """The same draws as planner.measure.run_load."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rps, int(rps * SECONDS * 2) + 10))
    return t[t < SECONDS]


@pytest.fixture(scope="module")
def client(triton):
    c = Client(triton.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def profile(client, triton, tmp_path_factory):
    measured = measure_profile(client, triton.metrics_url, "cpu-tiny", decode_tokens=MAX_TOKENS)
    path = tmp_path_factory.mktemp("profile") / "cpu-tiny.json"
    path.write_text(json.dumps(measured.to_json()))
    return load_profile(path)


def test_shipped_cpu_profile_is_still_this_machine(profile):
    shipped = load_profile(SHIPPED)
    assert shipped.slots == profile.slots
    ratio = shipped.step_table()[shipped.slots] / profile.step_table()[profile.slots]
    assert 0.5 < ratio < 2.0, f"planner/profiles/cpu-tiny.json is off by {ratio:.2f}x: re-measure it"


@pytest.mark.parametrize("load", [0.3, 0.7, 1.3])
def test_simulated_pod_matches_real_triton(load, profile, client, triton):
    prompt_tokens = profile.measured["prefill_points"][0][0]
    scale = measure_decode(client, profile.slots, MAX_TOKENS) / profile.step_table()[profile.slots]
    profile = replace(profile, decode_step_seconds=tuple((b, s * scale) for b, s in profile.decode_step_seconds))
    capacity = profile.capacity_rps(prompt_tokens, MAX_TOKENS)
    rps = round(load * capacity, 2)
    real = run_load(client, triton.metrics_url, rps, SECONDS, WORDS, MAX_TOKENS, seed=11)

    t = arrivals(rps, 11)
    assert len(t) == real.sent
    trace = Trace("same", SECONDS, t, np.full(len(t), prompt_tokens), np.full(len(t), MAX_TOKENS))
    sim = simulate(trace, profile, Policy("one pod", static_replicas=1))
    done = sim.status == DONE
    sim_throughput = np.count_nonzero(done & (sim.arrival + sim.latency <= SECONDS)) / SECONDS
    sim_queue = float(np.nanmean(sim.queue_time))

    report = (
        f"{rps} req/s ({load:.0%} of {capacity:.2f}, steps x{scale:.2f}): throughput real {real.throughput:.2f} sim {sim_throughput:.2f}; "
        f"queue s real {real.mean_queue_seconds:.3f} sim {sim_queue:.3f}; rejected real {real.errors} "
        f"sim {np.count_nonzero(~done)}"
    )
    print(report)
    assert abs(sim_throughput - real.throughput) <= max(0.3 * real.throughput, 0.3), report
    if load < 1:
        assert abs(sim_queue - real.mean_queue_seconds) <= 0.1, report
    else:
        assert abs(sim_queue - real.mean_queue_seconds) <= max(0.5 * real.mean_queue_seconds, 0.5), report
