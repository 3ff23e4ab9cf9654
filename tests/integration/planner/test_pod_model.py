"""The pod model agrees with the real Triton: one pod, the same Poisson arrivals, three rates.

This 2-core machine is shared, and its speed swings by several times within minutes, so the
engine's speed is taken from the run itself: the decode step table of the profile (measured
first with `planner.measure`, the command that produced planner/profiles/cpu-tiny.json) is
scaled until the simulated time per generated token equals the median the client saw. What
is checked is the rest of the model: Triton's batcher and bounded queue, the slots, the
backpressure of `execute`, prefill, which set the queue time and the throughput.

Tolerance (also in planner/README.md): throughput within 25 % (or 0.3 req/s); Triton's mean
queue time per request within 0.25 s (or 50 %) below saturation, and within a factor 2.5 (or
0.5 s) once the pod is saturated, where a 20-second window of a queue near its critical load
varies that much from run to run.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from planner.capacity import pod_capacity
from planner.measure import Client, measure_profile, run_load
from planner.pod import DONE
from planner.profile import load_profile
from planner.sim import Policy, simulate
from planner.traffic import Trace

pytestmark = pytest.mark.integration

SECONDS = 20.0
WORDS = 8
MAX_TOKENS = 32


def arrivals(rps: float, seed: int) -> np.ndarray:
    """The same draws as planner.measure.run_load."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rps, int(rps * SECONDS * 2) + 10))
    return t[t < SECONDS]


def per_token(result) -> float:
    done = result.status == DONE
    return float(np.median((result.latency[done] - result.ttft[done]) / (MAX_TOKENS - 1)))


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


@pytest.mark.parametrize("load", [0.3, 0.6, 1.5])
def test_simulated_pod_matches_real_triton(load, profile, client, triton):
    prompt_tokens = profile.measured["prefill_points"][0][0]
    capacity = pod_capacity(profile, np.array([prompt_tokens]), np.array([MAX_TOKENS]), 2.0, 0.99, seconds=120)
    rps = round(load * capacity, 2)
    real = run_load(client, triton.metrics_url, rps, SECONDS, WORDS, MAX_TOKENS, seed=11)

    t = arrivals(rps, 11)
    assert len(t) == real.sent
    trace = Trace("same", SECONDS, t, np.full(len(t), prompt_tokens), np.full(len(t), MAX_TOKENS))
    scale = float(np.median(real.per_token)) / per_token(simulate(trace, profile, Policy("one", static_replicas=1)))
    for _ in range(2):
        calibrated = replace(profile, decode_step_seconds=tuple((b, s * scale) for b, s in profile.decode_step_seconds))
        sim = simulate(trace, calibrated, Policy("one pod", static_replicas=1))
        scale *= float(np.median(real.per_token)) / per_token(sim)
    done = sim.status == DONE
    sim_throughput = np.count_nonzero(done & (sim.arrival + sim.latency <= SECONDS)) / SECONDS
    sim_queue = float(np.nanmean(sim.queue_time))
    saturated = real.throughput < 0.9 * rps

    report = (
        f"{rps} req/s, steps x{scale:.2f}{' (saturated)' if saturated else ''}: throughput real "
        f"{real.throughput:.2f} sim {sim_throughput:.2f}; queue s real {real.mean_queue_seconds:.3f} sim "
        f"{sim_queue:.3f}; rejected real {real.errors} sim {np.count_nonzero(~done)}"
    )
    print(report)
    assert abs(sim_throughput - real.throughput) <= max(0.25 * real.throughput, 0.3), report
    if saturated:
        if abs(sim_queue - real.mean_queue_seconds) > 0.5:
            assert real.mean_queue_seconds / 2.5 <= sim_queue <= 2.5 * real.mean_queue_seconds, report
    else:
        assert abs(sim_queue - real.mean_queue_seconds) <= max(0.5 * real.mean_queue_seconds, 0.25), report
