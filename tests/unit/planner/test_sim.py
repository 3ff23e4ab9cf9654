"""The simulation: what a user reads off a run (latency, rejections, pods) behaves as the
pod profile and the ScaledObject say it should, and a seed repeats a run exactly."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from planner.pod import DONE, KILLED, REJECTED
from planner.profile import load_profile
from planner.prometheus import extrapolated_rate
from planner.report import summarize
from planner.scaledobject import load_scaled_object
from planner.sim import Policy, SimConfig, simulate
from planner.traffic import RequestMix, Trace, constant, step

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GPU = load_profile(ROOT / "planner/profiles/h100-qwen3-vl-4b.json")
BUILT = load_scaled_object(Path(__file__).parent / "data" / "overlay")
# Queue signals only: GPU utilization of a continuous-batching engine stays high at low load.
SO = replace(BUILT, triggers=tuple(t for t in BUILT.triggers if t.signal != "gpu_utilization"))


def test_same_seed_same_result():
    trace = step(5, before_minutes=5, high_minutes=10, after_minutes=10)
    a = simulate(trace, GPU, Policy("keda", scaled_object=SO), seed=3)
    b = simulate(trace, GPU, Policy("keda", scaled_object=SO), seed=3)
    assert np.array_equal(a.ttft, b.ttft, equal_nan=True)
    assert np.array_equal(a.status, b.status)
    assert a.pod_spans == b.pod_spans
    assert summarize(a, 2.0) == summarize(b, 2.0)


def test_a_lone_request_takes_prefill_plus_its_decode_steps():
    trace = Trace("one", 60.0, np.array([1.0]), np.array([200]), np.array([50]))
    r = simulate(trace, GPU, Policy("static", static_replicas=1))
    prefill = GPU.prefill_seconds_per_token * 200
    assert r.ttft[0] == pytest.approx(prefill)
    assert r.latency[0] == pytest.approx(prefill + 49 * GPU.step_table()[1])


def test_an_overloaded_pod_rejects_and_serves_at_its_capacity():
    mix = RequestMix(prompt_sigma=0, max_tokens_sigma=0)
    cap = GPU.capacity_rps(mix.prompt_median, mix.max_tokens_median)
    trace = constant(2, rps=3 * cap, seconds=1200, mix=mix)
    r = simulate(trace, GPU, Policy("static", static_replicas=1))
    assert np.count_nonzero(r.status == REJECTED) > 0.5 * len(trace.arrivals)
    done = r.status == DONE
    steady = done & (r.arrival + r.latency > 300) & (r.arrival + r.latency < 1200)
    assert np.count_nonzero(steady) / 900 == pytest.approx(cap, rel=0.1)


def test_keda_adds_pods_after_the_step_no_faster_than_the_cold_start():
    trace = step(1, low_rps=1.0, high_rps=15.0)
    r = simulate(trace, GPU, Policy("keda", scaled_object=SO), seed=1)
    s = summarize(r, 2.0)
    assert s.peak_replicas >= 15.0 / GPU.capacity_rps(220, 160)
    assert GPU.cold_start.total_seconds <= s.time_to_capacity < 600


def test_scale_down_drains_without_killing_requests():
    trace = step(1)
    r = simulate(trace, GPU, Policy("keda", scaled_object=SO), SimConfig(termination_grace_seconds=300), seed=1)
    tl = r.timeline
    assert tl.desired[-1] < max(tl.desired)
    assert np.count_nonzero(r.status == KILLED) == 0


def test_a_short_grace_period_kills_in_flight_requests():
    trace = step(1)
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


def test_static_pods_cost_their_hours():
    trace = constant(1, rps=0.2, seconds=7200)
    r = simulate(trace, GPU, Policy("static", static_replicas=3))
    assert summarize(r, 2.0).gpu_hours == pytest.approx(6.0)


def test_prometheus_rate_of_a_steady_counter():
    samples = [(t, float(t)) for t in range(15, 76, 15)]  # +1 per second, scraped every 15 s
    assert extrapolated_rate(samples, 15.5, 75.5) == pytest.approx(1.0)
    assert extrapolated_rate(samples[:1], 0, 60) is None
