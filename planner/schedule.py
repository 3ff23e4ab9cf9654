"""Predictive pre-scaling: from the past days' request rate, a daily schedule of minimum replicas
(KEDA cron triggers beside the load triggers) that has pods ready before the daily ramp, a cold
start ahead of it. The load triggers still scale beyond it: the HPA takes the highest proposal."""

from __future__ import annotations

import json
import math
import os
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from planner.scaledobject import Schedule, ScaledObjectSpec, Trigger
from planner.traffic import Trace

DAY = 86400.0
BIN_SECONDS = 900.0
# Triton's completed requests per second in the namespace: what the pods were asked to serve.
RATE_QUERY = 'sum(rate(nv_inference_request_success{namespace="qwen3-vl"}[5m]))'


class ScheduleError(ValueError):
    """The history cannot be read or gives no schedule."""


def rate_from_trace(trace: Trace, step: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, requests/s) per `step` of a recorded or generated trace."""
    return trace.rate(step)


def rate_from_prometheus(url: str, query: str = RATE_QUERY, days: float = 7.0, step: float = 300.0,
                         end: float | None = None, timeout: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, requests/s) of the last `days` from Prometheus' range query API (/api/v1/query_range)."""
    import time

    end = time.time() if end is None else end
    params = urllib.parse.urlencode({"query": query, "start": end - days * DAY, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query_range?{params}", timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise ScheduleError(f"Prometheus range query at {url} failed: {exc}") from exc
    results = (body.get("data") or {}).get("result") or []
    if body.get("status") != "success" or not results:
        raise ScheduleError(f"Prometheus returned no series for {query!r} over the last {days:g} days")
    points = np.array([(float(t), float(v)) for t, v in results[0]["values"]])
    return points[:, 0], points[:, 1]


def daily_rate(times: np.ndarray, rates: np.ndarray, bin_seconds: float = BIN_SECONDS) -> np.ndarray:
    """The highest rate seen in each `bin_seconds` of the day over all the days given (times in
    seconds, of the epoch or of the trace: both start a day at 00:00 in the schedule's timezone)."""
    if not len(times):
        raise ScheduleError("no history to learn a schedule from")
    bins = int(round(DAY / bin_seconds))
    index = ((np.asarray(times) % DAY) // bin_seconds).astype(int) % bins
    out = np.zeros(bins)
    np.maximum.at(out, index, np.nan_to_num(np.asarray(rates, dtype=float)))
    return out


def plan(per_bin: np.ndarray, capacity: float, lead_seconds: float, min_replicas: int, max_replicas: int,
         utilization: float = 1.0, bin_seconds: float = BIN_SECONDS) -> list[Schedule]:
    """Windows of the day with more pods than `min_replicas`: in each bin, the pods that carry the
    highest rate of the bins up to `lead_seconds` later at `utilization` of their capacity (so a pod
    started for a bin is ready before it), consecutive bins with the same count merged, across midnight too."""
    if capacity <= 0 or not 0 < utilization <= 1:
        raise ScheduleError("need a capacity > 0 and 0 < utilization <= 1")
    need = np.ceil(per_bin / (capacity * utilization) - 1e-9).astype(int)
    ahead = int(math.ceil(lead_seconds / bin_seconds))
    n = len(need)
    wanted = [min(max(max(need[(b + k) % n] for k in range(ahead + 1)), min_replicas), max_replicas) for b in range(n)]
    windows: list[Schedule] = []
    b = 0
    while b < n:
        e = b
        while e + 1 < n and wanted[e + 1] == wanted[b]:
            e += 1
        if wanted[b] > min_replicas:
            windows.append(Schedule(b * bin_seconds, (e + 1) * bin_seconds % DAY, int(wanted[b])))
        b = e + 1
    if len(windows) > 1 and windows[0].start == 0 and windows[-1].end == 0 \
            and windows[0].replicas == windows[-1].replicas:  # one window across midnight, one cron trigger
        windows = [Schedule(windows[-1].start, windows[0].end, windows[0].replicas), *windows[1:-1]]
    if len(windows) == 1 and windows[0].start == windows[0].end:
        raise ScheduleError(f"the schedule never drops to minReplicaCount ({min_replicas}): raise minReplicaCount "
                            f"to {windows[0].replicas} instead")
    return windows


def _cron(seconds: float) -> str:
    minutes = int(round(seconds / 60.0)) % (24 * 60)
    return f"{minutes % 60} {minutes // 60} * * *"


def cron_triggers(windows: list[Schedule], timezone: str = "Etc/UTC") -> list[dict]:
    """KEDA cron triggers, one per window: desiredReplicas between start and end, every day."""
    return [{"type": "cron", "name": f"schedule-{i}",
             "metadata": {"timezone": timezone, "start": _cron(w.start), "end": _cron(w.end),
                          "desiredReplicas": str(w.replicas)}}
            for i, w in enumerate(windows)]


def with_schedule(so: ScaledObjectSpec, windows: list[Schedule]) -> ScaledObjectSpec:
    """The ScaledObject with the schedule's cron triggers beside its own."""
    extra = tuple(Trigger(doc["name"], "cron", "cron", "AverageValue", 1.0, metadata=tuple(doc["metadata"].items()),
                          raw=doc, schedule=w) for doc, w in zip(cron_triggers(windows), windows))
    return replace(so, triggers=so.triggers + extra)


def write_schedule(windows: list[Schedule], so_name: str, source_overlay: str | Path, folder: str | Path,
                   timezone: str = "Etc/UTC") -> Path:
    """A kustomize overlay: the source overlay plus the cron triggers (a JSON patch that appends them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ops = [{"op": "add", "path": "/spec/triggers/-", "value": t} for t in cron_triggers(windows, timezone)]
    (folder / "scaledobject-schedule.yaml").write_text(
        "# Written by `python -m planner --schedule-from ... --schedule-overlay`: minimum replicas by time of day.\n"
        + yaml.safe_dump(ops, sort_keys=False))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(Path(source_overlay).resolve(), folder.resolve())],
        "patches": [{"path": "scaledobject-schedule.yaml",
                     "target": {"group": "keda.sh", "kind": "ScaledObject", "name": so_name}}],
    }
    (folder / "kustomization.yaml").write_text(
        "# Written by `python -m planner`: the overlay with a schedule of minimum replicas learnt from history.\n"
        + yaml.safe_dump(kustomization, sort_keys=False))
    return folder
