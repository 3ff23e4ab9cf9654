"""The policies compared by `--compare`, all derived from the ScaledObject as built (the last
one, named after the overlay, is that ScaledObject unchanged), and a
runner that simulates several of them side by side on the same trace and seed."""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from planner.profile import PodProfile
from planner.report import Digest, digest
from planner.scaledobject import ScaledObjectSpec, Trigger
from planner.sim import Policy, SimConfig, simulate
from planner.traffic import Trace

CPU_TARGET_UTILIZATION = 70.0


def pod_capacity(profile: PodProfile, trace: Trace) -> float:
    if not len(trace.arrivals):
        return profile.capacity_rps(1.0, 1.0)
    return profile.capacity_rps(float(np.mean(trace.prompt_tokens)), float(np.mean(trace.max_tokens)))


def static_for(rps: float, capacity: float) -> int:
    return max(1, math.ceil(rps / capacity - 1e-9))


def only(so: ScaledObjectSpec, signal: str, name: str) -> Policy | None:
    triggers = tuple(t for t in so.triggers if t.signal == signal)
    if not triggers:
        return None
    return Policy(name, scaled_object=replace(so, triggers=triggers))


def cpu_hpa(so: ScaledObjectSpec) -> Policy:
    """A plain HPA on CPU utilization with the same bounds and behavior (CPU cannot scale to 0)."""
    trigger = Trigger("cpu", "cpu", "cpu", "Utilization", CPU_TARGET_UTILIZATION)
    return Policy(
        f"CPU HPA {CPU_TARGET_UTILIZATION:g} %",
        scaled_object=replace(so, triggers=(trigger,), min_replica_count=max(so.min_replica_count, 1), fallback=None),
    )


def comparison(so: ScaledObjectSpec, profile: PodProfile, trace: Trace) -> list[Policy]:
    cap = pod_capacity(profile, trace)
    policies = [
        Policy("static at peak", static_replicas=static_for(trace.peak_rps(), cap)),
        Policy("static at mean", static_replicas=static_for(trace.mean_rps(), cap)),
        cpu_hpa(so),
    ]
    for signal, label in (("queue_time", "KEDA queue time"), ("gpu_utilization", "KEDA GPU util")):
        p = only(so, signal, label)
        if p is not None:
            policies.append(p)
    policies.append(Policy(f"KEDA {Path(so.source).name}", scaled_object=so))
    return policies


def _run_one(args) -> Digest:
    trace, profile, policy, config, seed, slo = args
    return digest(simulate(trace, profile, policy, config, seed), slo)


def run_policies(
    trace: Trace, profile: PodProfile, policies: list[Policy], config: SimConfig, seed: int, slo_ttft: float, workers: int
) -> list[Digest]:
    """Same trace, same seed (same routing draws) for every policy; results in input order."""
    jobs = [(trace, profile, p, config, seed, slo_ttft) for p in policies]
    if workers <= 1 or len(jobs) == 1:
        return [_run_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_run_one, jobs))


def fit_static_peak(
    trace: Trace, profile: PodProfile, config: SimConfig, seed: int, slo_ttft: float, share: float, start: int, limit: int = 6
) -> tuple[int, Digest]:
    """The fewest static pods, from `start` up, that meet the objective on this trace."""
    n = start
    result = _run_one((trace, profile, Policy("static at peak", static_replicas=n), config, seed, slo_ttft))
    while not result.summary.meets(share) and n < start + limit:
        n += 1
        result = _run_one((trace, profile, Policy("static at peak", static_replicas=n), config, seed, slo_ttft))
    return n, result
