"""Metrics as Prometheus sees them: scraped samples, rate() with Prometheus' extrapolation,
and the recording rules of docs/contracts.md evaluated on their own interval.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field

STALENESS_SECONDS = 300.0
WAITING_WINDOW_SECONDS = 30.0  # min_over_time(qwen3vl:requests_waiting[30s]) in the GPU rule


def extrapolated_rate(samples: list[tuple[float, float]], range_start: float, range_end: float) -> float | None:
    """rate() of a counter over (range_start, range_end], the way Prometheus 2.x computes it:
    counter resets added back, then extrapolated towards the window edges (at most half an
    average sample interval past the samples, and never below zero)."""
    if len(samples) < 2:
        return None
    first_t, first_v = samples[0]
    last_t, last_v = samples[-1]
    result = last_v - first_v
    prev = first_v
    for _, v in samples[1:]:
        if v < prev:
            result += prev
        prev = v
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    to_start = first_t - range_start
    to_end = range_end - last_t
    average = sampled / (len(samples) - 1)
    if result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return result * (interval / sampled) / (range_end - range_start)


@dataclass
class Series:
    """Scraped samples of one pod's counters and gauges."""

    times: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, t: float, sample: dict[str, float]) -> None:
        self.times.append(t)
        for name, v in sample.items():
            self.values.setdefault(name, []).append(v)

    def window(self, name: str, start: float, end: float) -> list[tuple[float, float]]:
        lo = bisect_left(self.times, start + 1e-9)
        hi = bisect_left(self.times, end + 1e-9)
        vals = self.values.get(name, [])
        return list(zip(self.times[lo:hi], vals[lo:hi]))

    def latest(self, name: str, at: float) -> float | None:
        hi = bisect_left(self.times, at + 1e-9)
        if hi == 0 or at - self.times[hi - 1] > STALENESS_SECONDS:
            return None
        return self.values[name][hi - 1]

    def trim(self, before: float) -> None:
        cut = bisect_left(self.times, before)
        if cut > 64:
            del self.times[:cut]
            for v in self.values.values():
                del v[:cut]


@dataclass
class RuleValues:
    """The namespace-level recording rules KEDA queries, as of one evaluation."""

    queue_time: float = math.nan
    triton_queue_time: float = math.nan
    pending: float = math.nan
    waiting: float = math.nan
    occupancy: float = math.nan
    gpu_utilization: float = math.nan
    gpu_utilization_while_waiting: float = math.nan
    batch_size: float = math.nan
    batch_size_mean: float = math.nan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class Prometheus:
    """Scrapes pods and evaluates the recording rules; KEDA reads the last evaluation."""

    def __init__(self, scrape_interval: float = 15.0, eval_interval: float = 15.0, rate_window: float = 60.0):
        if scrape_interval <= 0 or eval_interval <= 0 or rate_window <= 0:
            raise ValueError("scrape interval, evaluation interval and rate window must be > 0")
        self.scrape_interval = scrape_interval
        self.eval_interval = eval_interval
        self.rate_window = rate_window
        self.series: dict[int, Series] = {}
        self.rules = RuleValues()
        self.rules_at = -math.inf
        self.down = False

    def scrape(self, t: float, targets: dict[int, dict[str, float]]) -> None:
        for pod_id, sample in targets.items():
            self.series.setdefault(pod_id, Series()).add(t, sample)

    def forget_stale(self, t: float) -> None:
        for pod_id in [p for p, s in self.series.items() if not s.times or t - s.times[-1] > STALENESS_SECONDS]:
            del self.series[pod_id]
        for s in self.series.values():
            s.trim(t - self.rate_window - 4 * self.scrape_interval)

    def evaluate(self, t: float) -> None:
        """`triton:queue_time_per_request_seconds:avg1m` = rate(queue_us)/rate(success)/1e6 per pod
        (0 for a pod that served nothing in the window), averaged per namespace;
        `qwen3vl:queue_time_per_request_seconds:avg1m` adds the model's own wait per request
        (rate(qwen3vl_queue_seconds_sum)/rate(_count), 0 without requests) and the namespace rule
        weights each pod by its rate(success);
        `triton:pending_requests` summed; `triton:gpu_utilization:avg` averaged;
        `qwen3vl:batch_size:avg1m` = rate(batch_size_sum)/rate(batch_size_count) per pod (pods with
        no decode step drop out), summed (or averaged when the query says avg);
        `qwen3vl:requests_waiting` (Triton's queue and those handed to the model, not running) and
        `qwen3vl:occupancy` (sequences over max_num_seqs or KV cache in use, the fuller) summed;
        `qwen3vl:gpu_utilization_while_waiting` sums the GPU utilization of
        the pods whose every sample of the last 30 s had a request waiting."""
        start = t - self.rate_window
        queue_times: list[float] = []
        weighted: list[tuple[float, float]] = []
        pending: list[float] = []
        waiting: list[float] = []
        occupancy: list[float] = []
        gpu: list[float] = []
        gpu_waiting: list[float] = []
        batch: list[float] = []
        for s in self.series.values():
            p = s.latest("pending", t)
            if p is None:
                continue
            pending.append(p)
            waiting.append(s.latest("waiting", t))
            occupancy.append(s.latest("occupancy", t))
            g = s.latest("gpu_util", t)
            if g is not None:
                gpu.append(g)
                kept_waiting = s.window("waiting", t - WAITING_WINDOW_SECONDS, t)
                gpu_waiting.append(g if kept_waiting and min(v for _, v in kept_waiting) > 0 else 0.0)
            q = extrapolated_rate(s.window("queue_us", start, t), start, t)
            n = extrapolated_rate(s.window("success", start, t), start, t)
            if q is not None and n is not None:
                triton = q / n / 1e6 if n > 0 else 0.0
                queue_times.append(triton)
                wait = extrapolated_rate(s.window("model_wait_sum", start, t), start, t)
                count = extrapolated_rate(s.window("model_wait_count", start, t), start, t)
                model = wait / count if wait is not None and count else 0.0
                weighted.append((triton + model, n))
            seq = extrapolated_rate(s.window("seq_steps", start, t), start, t)
            steps = extrapolated_rate(s.window("steps", start, t), start, t)
            if seq is not None and steps:
                batch.append(seq / steps)
        served = sum(n for _, n in weighted)
        self.rules = RuleValues(
            queue_time=sum(q * n for q, n in weighted) / served if served > 0 else (0.0 if weighted else math.nan),
            triton_queue_time=_mean(queue_times),
            pending=float(sum(pending)) if pending else math.nan,
            waiting=float(sum(waiting)) if waiting else math.nan,
            occupancy=float(sum(occupancy)) if occupancy else math.nan,
            gpu_utilization=_mean(gpu),
            gpu_utilization_while_waiting=float(sum(gpu_waiting)) if gpu_waiting else math.nan,
            batch_size=float(sum(batch)) if batch else math.nan,
            batch_size_mean=_mean(batch),
        )
        self.rules_at = t

    def query(self, signal: str, t: float) -> float | None:
        if self.down:
            return None
        if t - self.rules_at > STALENESS_SECONDS:
            return math.nan
        return getattr(self.rules, signal)
