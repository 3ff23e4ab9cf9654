"""The policies `--compare` puts side by side, all built from the triggers of the overlay as built
(their queries and connection settings), and a runner that simulates several of them on the same
trace and seed."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from planner.profile import PodProfile
from planner.report import Digest, digest
from planner.scaledobject import ScaledObjectSpec, Trigger
from planner.sim import Policy, SimConfig, simulate
from planner.traffic import Trace

# The combination issue 24 shipped (k8s/README.md, "Autoscaling"): every signal, thresholds set by hand.
ISSUE_24 = {"queue_time": 0.5, "waiting": 4.0, "occupancy": 0.6, "gpu_utilization_while_waiting": 80.0}


def with_triggers(so: ScaledObjectSpec, thresholds: dict[str, float], name: str) -> Policy | None:
    """The ScaledObject with only the triggers named in `thresholds`, at those thresholds; None if the
    overlay lacks one of them."""
    triggers: list[Trigger] = []
    for signal, threshold in thresholds.items():
        found = [t for t in so.triggers if t.signal == signal]
        if not found:
            return None
        triggers.append(replace(found[0], threshold=threshold))
    return Policy(name, scaled_object=replace(so, triggers=tuple(triggers)))


def comparison(so: ScaledObjectSpec, peak_pods: int, mean_pods: int, scheduled: ScaledObjectSpec | None = None
               ) -> list[Policy]:
    """Static at peak and at mean, the queue signals alone, occupancy alone, issue 24's combination,
    the ScaledObject as built, and (given) the same with a schedule of minimum replicas."""
    policies = [Policy("static at peak", static_replicas=peak_pods),
                Policy("static at mean", static_replicas=mean_pods)]
    for name, thresholds in (
        ("queue only", {k: ISSUE_24[k] for k in ("queue_time", "waiting")}),
        ("occupancy only", {"occupancy": ISSUE_24["occupancy"]}),
        ("issue 24 combination", ISSUE_24),
    ):
        policy = with_triggers(so, thresholds, name)
        if policy is not None:
            policies.append(policy)
    policies.append(Policy(f"KEDA {Path(so.source).name} (as built)", scaled_object=so))
    if scheduled is not None:
        policies.append(Policy(f"KEDA {Path(so.source).name} + schedule", scaled_object=scheduled))
    return policies


def _run_one(args) -> Digest:
    trace, profile, policy, config, seed, slo, capacity = args
    return digest(simulate(trace, profile, policy, config, seed), slo, capacity)


def run_policies(trace: Trace, profile: PodProfile, policies: list[Policy], config: SimConfig, seed: int,
                 slo_ttft: float, capacity: float, workers: int) -> list[Digest]:
    """Same trace, same seed (same routing draws) for every policy; results in input order."""
    jobs = [(trace, profile, p, config, seed, slo_ttft, capacity) for p in policies]
    if workers <= 1 or len(jobs) == 1:
        return [_run_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_run_one, jobs))


def fit_static_peak(trace: Trace, profile: PodProfile, config: SimConfig, seed: int, slo_ttft: float, share: float,
                    capacity: float, start: int, limit: int = 6) -> tuple[int, Digest]:
    """The fewest static pods, from `start` up, that meet the objective on this trace."""
    n = start
    result = _run_one((trace, profile, Policy("static at peak", static_replicas=n), config, seed, slo_ttft, capacity))
    while not result.summary.meets(share) and n < start + limit:
        n += 1
        result = _run_one((trace, profile, Policy("static at peak", static_replicas=n), config, seed, slo_ttft,
                           capacity))
    return n, result
