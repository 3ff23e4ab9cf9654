"""`--search`: thresholds and min/max for the ScaledObject that meet the objective with the
fewest GPU-hours on a trace, found by simulating a grid around the values as built."""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import yaml

from planner.policies import pod_capacity, run_policies
from planner.profile import PodProfile
from planner.report import Summary
from planner.scaledobject import ScaledObjectSpec, Trigger
from planner.sim import Policy, SimConfig
from planner.traffic import Trace

QUEUE_TIME_GRID = (0.25, 0.5, 1.0)
PENDING_GRID = (2.0, 4.0, 8.0)
OCCUPANCY_GRID = (0.5, 0.7, 0.85)


def occupancy_trigger(so: ScaledObjectSpec, slots: int, share: float) -> Trigger:
    """Busy slots per pod (AverageValue of the summed per-pod batch size): a signal that grows
    with the load before any queue forms. Connection settings are copied from a trigger as built."""
    template = next((t for t in so.triggers if t.type == "prometheus"), None)
    namespace = re.search(r'namespace="([^"]+)"', template.query if template else "")
    selector = f'{{namespace="{namespace.group(1)}"}}' if namespace else ""
    query = f"sum(qwen3vl:batch_size:avg1m{selector})"
    threshold = round(share * slots, 1)
    raw = copy.deepcopy(template.raw) if template is not None else {"type": "prometheus", "metadata": {}}
    raw.update({"name": "busy-slots", "metricType": "AverageValue"})
    raw["metadata"] = {**raw.get("metadata", {}), "query": query, "threshold": f"{threshold:g}", "activationThreshold": "1"}
    return Trigger("busy-slots", "prometheus", "batch_size", "AverageValue", threshold, 1.0, query,
                   tuple((k, str(v)) for k, v in raw["metadata"].items()), raw)


@dataclass(frozen=True)
class Candidate:
    so: ScaledObjectSpec
    summary: Summary


def _with_thresholds(so: ScaledObjectSpec, thresholds: dict[str, float], drop: set[str]) -> ScaledObjectSpec:
    triggers = tuple(
        replace(t, threshold=thresholds.get(t.signal, t.threshold)) for t in so.triggers if t.signal not in drop
    )
    return replace(so, triggers=triggers)


def _grid(so: ScaledObjectSpec, slots: int) -> list[ScaledObjectSpec]:
    """Queue thresholds x what to do with the GPU trigger: keep it, drop it, or replace it by
    busy slots per pod at a few shares of the slots."""
    signals = {t.signal for t in so.triggers}
    q_values = QUEUE_TIME_GRID if "queue_time" in signals else (None,)
    p_values = PENDING_GRID if "pending" in signals else (None,)
    out = []
    for q, p in product(q_values, p_values):
        thresholds = {k: v for k, v in (("queue_time", q), ("pending", p)) if v is not None}
        kept = _with_thresholds(so, thresholds, set())
        out.append(kept)
        queue_only = tuple(t for t in kept.triggers if t.signal != "gpu_utilization")
        if queue_only and len(queue_only) < len(kept.triggers):
            out.append(replace(kept, triggers=queue_only))
        for share in OCCUPANCY_GRID:
            out.append(replace(kept, triggers=queue_only + (occupancy_trigger(so, slots, share),)))
    return out


def _evaluate(specs, trace, profile, config, seed, slo_ttft, workers) -> list[Candidate]:
    policies = [Policy(f"candidate {i}", scaled_object=s) for i, s in enumerate(specs)]
    digests = run_policies(trace, profile, policies, config, seed, slo_ttft, workers)
    return [Candidate(s, d.summary) for s, d in zip(specs, digests)]


def _best(candidates: list[Candidate], share: float) -> Candidate | None:
    feasible = [c for c in candidates if c.summary.meets(share)]
    if not feasible:
        return None
    return min(feasible, key=lambda c: (round(c.summary.gpu_hours, 3), -c.summary.within_slo))


def search(
    so: ScaledObjectSpec,
    profile: PodProfile,
    trace: Trace,
    config: SimConfig,
    seed: int,
    slo_ttft: float,
    share: float,
    workers: int,
) -> tuple[Candidate | None, list[Candidate]]:
    """Stage 1: queue thresholds and the GPU trigger kept, dropped or replaced, min/max as built.
    Stage 2: minReplicaCount 0..3 and maxReplicaCount around the peak need, thresholds fixed."""
    stage1 = _evaluate(_grid(so, profile.slots), trace, profile, config, seed, slo_ttft, workers)
    best = _best(stage1, share) or max(stage1, key=lambda c: c.summary.within_slo)
    need = math.ceil(trace.peak_rps() / pod_capacity(profile, trace))
    max_options = sorted({so.max_replica_count, need + 1, need + 2, max(need * 3 // 2, need + 3)})
    specs = [
        replace(best.so, min_replica_count=lo, max_replica_count=hi)
        for lo, hi in product((0, 1, 2, 3), max_options)
        if hi >= max(lo, 1) and (lo, hi) != (best.so.min_replica_count, best.so.max_replica_count)
    ]
    stage2 = _evaluate(specs, trace, profile, config, seed, slo_ttft, workers)
    everything = stage1 + stage2
    return _best(everything, share), everything


def scaledobject_snippet(so: ScaledObjectSpec) -> str:
    """The ScaledObject fields to set, as a strategic-merge patch (triggers are replaced whole)."""
    triggers = []
    for t in so.triggers:
        doc = copy.deepcopy(t.raw) or {"type": t.type, "name": t.name, "metricType": t.metric_type,
                                       "metadata": dict(t.metadata)}
        doc.setdefault("metadata", {})["threshold"] = f"{t.threshold:g}"
        triggers.append(doc)
    doc = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": so.name},
        "spec": {"minReplicaCount": so.min_replica_count, "maxReplicaCount": so.max_replica_count, "triggers": triggers},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_overlay(so: ScaledObjectSpec, source_overlay: str | Path, folder: str | Path) -> Path:
    """A kustomize overlay: the source overlay plus the proposed values, so that the proposal can
    be built, diffed and simulated like any other overlay."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scaledobject-patch.yaml").write_text(scaledobject_snippet(so))
    base = os.path.relpath(Path(source_overlay).resolve(), folder.resolve())
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "patches": [{"path": "scaledobject-patch.yaml", "target": {"kind": "ScaledObject", "name": so.name}}],
    }
    (folder / "kustomization.yaml").write_text(
        "# Written by `python -m planner --search`: the proposed ScaledObject values on top of the overlay.\n"
        + yaml.safe_dump(kustomization, sort_keys=False)
    )
    return folder
