"""What one pod serves within the objective: the rate the traces are scaled to, static pod counts
start from, and "time under capacity" counts ready pods in. Found by simulating one pod, since
what limits it (decode steps, prefill passes, `execute`'s host time) depends on the request sizes."""

from __future__ import annotations

import numpy as np

from planner.pod import DONE, READY, Pod, Requests
from planner.profile import PodProfile


def within_objective(profile: PodProfile, rate: float, prompts: np.ndarray, answers: np.ndarray, slo_ttft: float,
                     seconds: float, seed: int) -> float:
    """Share of requests with their first token within `slo_ttft` when one pod gets `rate` requests/s
    (Poisson) of sizes drawn from `prompts`/`answers`; refused or unfinished ones count as misses."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.2) + 10))
    arrivals = arrivals[arrivals < seconds]
    pick = rng.integers(0, len(prompts), len(arrivals))
    req = Requests(arrivals, prompts[pick], answers[pick])
    pod = Pod(0, 0.0, 0.0, profile, profile.step_table(), req, metrics_from=0.0)
    pod.state = READY
    for i, t in enumerate(req.arrival):
        pod.arrive(i, t)
    pod.advance(seconds + 600.0)
    ok = (np.asarray(req.status) == DONE) & (np.asarray(req.ttft) + profile.request_overhead_seconds <= slo_ttft)
    return float(np.mean(ok)) if len(ok) else 1.0


def pod_capacity(profile: PodProfile, prompts: np.ndarray, answers: np.ndarray, slo_ttft: float, slo_share: float,
                 seconds: float = 600.0, seed: int = 1) -> float:
    """The highest steady rate (requests/s, within 1 %) at which one pod meets the objective for
    requests of these sizes."""
    prompts = np.asarray(prompts, dtype=np.int64)
    answers = np.asarray(answers, dtype=np.int64)
    lo, hi = 0.0, 1.0
    while within_objective(profile, hi, prompts, answers, slo_ttft, seconds, seed) >= slo_share:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            return hi
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if within_objective(profile, mid, prompts, answers, slo_ttft, seconds, seed) >= slo_share:
            lo = mid
        else:
            hi = mid
    return lo
