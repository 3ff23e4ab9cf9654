"""The simulation: what a user reads off a run (latency, rejections, pods) behaves as the pod
profile and the ScaledObject say it should, and a seed repeats a run exactly."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from planner.capacity import pod_capacity
from planner.pod import DONE, KILLED, REJECTED
from planner.profile import load_profile
from planner.prometheus import extrapolated_rate
from planner.report import summarize
from planner.scaledobject import Schedule, Trigger, load_scaled_object
from planner.sim import Policy, SimConfig, simulate
from planner.traffic import RequestMix, Trace, constant, step

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GPU = load_profile(ROOT / "planner/profiles/h200-qwen3-vl-4b.json")
SO = load_scaled_object(Path(__file__).parent / "data" / "overlay")
FIXED = RequestMix(prompt_sigma=0, max_tokens_sigma=0)  # 220-token prompts, 512-token answers
CAPACITY = pod_capacity(GPU, np.array([220]), np.array([512]), 2.0, 0.99, seconds=300)


def test_same_seed_same_result():
    trace = step(5, low_rps=2.0, high_rps=30.0, before_minutes=5, high_minutes=10, after_minutes=10)
    a = simulate(trace, GPU, Policy("keda", scaled_object=SO), seed=3)
    b = simulate(trace, GPU, Policy("keda", scaled_object=SO), seed=3)
    assert np.array_equal(a.ttft, b.ttft, equal_nan=True)
    assert np.array_equal(a.status, b.status)
    assert a.pod_spans == b.pod_spans
    assert summarize(a, 2.0, CAPACITY) == summarize(b, 2.0, CAPACITY)


def test_a_lone_request_waits_for_the_batcher_its_prompt_its_prefill_and_its_decode_steps():
    trace = Trace("one", 60.0, np.array([1.0]), np.array([200]), np.array([50]))
    r = simulate(trace, GPU, Policy("static", static_replicas=1))
    ttft = GPU.max_queue_delay_seconds + GPU.execute_seconds_per_request + GPU.prefill_seconds(200) \
        + GPU.request_overhead_seconds
    assert r.ttft[0] == pytest.approx(ttft)
    # its last token leaves behind the other streams' (none but itself)
    assert r.latency[0] == pytest.approx(ttft + 49 * GPU.decode_step(1, 200) + GPU.response_seconds_per_stream_squared)


def test_an_overloaded_pod_rejects_and_serves_at_least_its_capacity():
    trace = constant(2, rps=3 * CAPACITY, seconds=900, mix=FIXED)
    r = simulate(trace, GPU, Policy("static", static_replicas=1))
    assert np.count_nonzero(r.status == REJECTED) > 0.5 * len(trace.arrivals)
    finished = r.arrival + r.latency
    steady = (r.status == DONE) & (finished > 300) & (finished < 900)
    assert CAPACITY <= np.count_nonzero(steady) / 600 < 2 * CAPACITY


def test_each_request_goes_to_the_least_occupied_pod():
    """One long answer holds a pod; the short ones that follow go to the other, as the frontend routes."""
    arrivals = np.array([0.0] + [2.0 + k for k in range(10)])  # the long answer takes ~15 s
    answers = np.array([4000] + [20] * 10)
    trace = Trace("routing", 200.0, arrivals, np.full(11, 200), answers)
    from planner.sim import Simulation

    sim = Simulation(trace, GPU, Policy("static", static_replicas=2))
    r = sim.run()
    assert np.all(r.status == DONE)
    long_pod = sim.req.pod[0]
    assert all(pod != long_pod for pod in sim.req.pod[1:])


def test_keda_adds_pods_after_the_step_no_faster_than_the_cold_start():
    trace = step(1, low_rps=2.0, high_rps=3.5 * CAPACITY, mix=FIXED)
    r = simulate(trace, GPU, Policy("keda", scaled_object=SO), seed=1)
    s = summarize(r, 2.0, CAPACITY)
    assert s.peak_replicas >= 4
    assert GPU.cold_start.total_seconds <= s.time_to_capacity < 900


def test_scale_down_drains_without_killing_requests():
    trace = step(1, low_rps=2.0, high_rps=3.5 * CAPACITY, mix=FIXED)
    r = simulate(trace, GPU, Policy("keda", scaled_object=SO), SimConfig(termination_grace_seconds=300), seed=1)
    tl = r.timeline
    assert tl.desired[-1] < max(tl.desired)
    assert np.count_nonzero(r.status == KILLED) == 0


def test_a_short_grace_period_kills_in_flight_requests():
    trace = step(1, low_rps=2.0, high_rps=3.5 * CAPACITY, mix=FIXED)
    r = simulate(trace, GPU, Policy("keda", scaled_object=SO), SimConfig(termination_grace_seconds=1), seed=1)
    assert np.count_nonzero(r.status == KILLED) > 0


def test_prometheus_outage_falls_back_to_the_fallback_replicas():
    so = replace(SO, min_replica_count=1)
    trace = constant(4, rps=0.5, seconds=3600)
    r = simulate(trace, GPU, Policy("keda", scaled_object=so), SimConfig(prometheus_outages=((1200.0, 2400.0),)))
    tl = r.timeline
    during = [d for t, d in zip(tl.t, tl.desired) if 1500 < t < 2400]
    before = [d for t, d in zip(tl.t, tl.desired) if 900 < t < 1200]
    assert max(before) < SO.fallback.replicas
    assert max(during) == SO.fallback.replicas


def test_a_cron_trigger_holds_its_replicas_through_its_window():
    """KEDA's cron scaler: desiredReplicas from start to end every day; the load triggers beside it."""
    window = Trigger("morning", "cron", "cron", "AverageValue", 1.0, schedule=Schedule(3600.0, 7200.0, 4))
    so = replace(SO, min_replica_count=1, triggers=SO.triggers + (window,))
    r = simulate(constant(4, rps=0.5, seconds=3 * 3600), GPU, Policy("keda", scaled_object=so))
    tl = r.timeline
    assert max(d for t, d in zip(tl.t, tl.desired) if t < 3600) == 1
    assert min(d for t, d in zip(tl.t, tl.desired) if 3700 < t < 7200) == 4
    assert tl.desired[-1] == 1


def test_static_pods_cost_their_hours():
    trace = constant(1, rps=0.2, seconds=7200)
    r = simulate(trace, GPU, Policy("static", static_replicas=3))
    assert summarize(r, 2.0, CAPACITY).gpu_hours == pytest.approx(6.0)


def test_prometheus_rate_of_a_steady_counter():
    samples = [(t, float(t)) for t in range(15, 76, 15)]  # +1 per second, scraped every 15 s
    assert extrapolated_rate(samples, 15.5, 75.5) == pytest.approx(1.0)
    assert extrapolated_rate(samples[:1], 0, 60) is None
