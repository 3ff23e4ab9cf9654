"""`--search`: the thresholds, bounds and scale-down pace that meet the objective with the fewest
GPU-hours on a trace, found by simulating a grid around the ScaledObject as built.

The queue-time target is not searched: it is a quarter of the time-to-first-token objective
(monitoring/objective.py), which the alerts and the dashboard share."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import yaml

from planner.hpa import Behavior
from planner.policies import run_policies
from planner.profile import PodProfile
from planner.report import Summary
from planner.scaledobject import ScaledObjectSpec, build_overlay, pick_scaled_object
from planner.sim import Policy, SimConfig
from planner.traffic import Trace

OCCUPANCY_GRID = (0.5, 0.6, 0.7, 0.8)
WAITING_GRID = (4.0, 8.0)
MIN_REPLICAS_GRID = (1, 2)
SCALE_DOWN_WINDOW_GRID = (300, 600)


@dataclass(frozen=True)
class Candidate:
    so: ScaledObjectSpec
    summary: Summary


def _thresholds(so: ScaledObjectSpec, values: dict[str, float], drop: set[str]) -> ScaledObjectSpec:
    triggers = tuple(replace(t, threshold=values.get(t.signal, t.threshold)) for t in so.triggers if t.signal not in drop)
    return replace(so, triggers=triggers)


def _scale_down_window(so: ScaledObjectSpec, seconds: int) -> ScaledObjectSpec:
    down = replace(so.behavior.scale_down, stabilization_window_seconds=seconds)
    return replace(so, behavior=Behavior(scale_up=so.behavior.scale_up, scale_down=down))


def _stage1(so: ScaledObjectSpec) -> list[ScaledObjectSpec]:
    """Occupancy and waiting-requests targets, with the GPU trigger kept or dropped."""
    signals = {t.signal for t in so.triggers}
    occupancy = OCCUPANCY_GRID if "occupancy" in signals else (None,)
    waiting = WAITING_GRID if "waiting" in signals else (None,)
    gpu = [t.signal for t in so.triggers if t.signal.startswith("gpu_utilization")]
    out = []
    for occ, wait in product(occupancy, waiting):
        values = {k: v for k, v in (("occupancy", occ), ("waiting", wait)) if v is not None}
        out.append(_thresholds(so, values, set()))
        if gpu:
            out.append(_thresholds(so, values, set(gpu)))
    return out


def _evaluate(specs, trace, profile, config, seed, slo_ttft, capacity, workers) -> list[Candidate]:
    policies = [Policy(f"candidate {i}", scaled_object=s) for i, s in enumerate(specs)]
    digests = run_policies(trace, profile, policies, config, seed, slo_ttft, capacity, workers)
    return [Candidate(s, d.summary) for s, d in zip(specs, digests)]


def _best(candidates: list[Candidate], share: float) -> Candidate | None:
    feasible = [c for c in candidates if c.summary.meets(share)]
    if not feasible:
        return None
    return min(feasible, key=lambda c: (round(c.summary.gpu_hours, 2), -c.summary.within_slo))


def search(so: ScaledObjectSpec, profile: PodProfile, trace: Trace, config: SimConfig, seed: int, slo_ttft: float,
           share: float, capacity: float, workers: int) -> tuple[Candidate | None, list[Candidate]]:
    """Stage 1: the targets (`_stage1`), bounds and behavior as built. Stage 2: around the best,
    minReplicaCount and the scale-down stabilization window."""
    stage1 = _evaluate(_stage1(so), trace, profile, config, seed, slo_ttft, capacity, workers)
    best = _best(stage1, share) or max(stage1, key=lambda c: c.summary.within_slo)
    specs = []
    for low, window in product(MIN_REPLICAS_GRID, SCALE_DOWN_WINDOW_GRID):
        spec = _scale_down_window(replace(best.so, min_replica_count=low), window)
        if spec != best.so:
            specs.append(spec)
    stage2 = _evaluate(specs, trace, profile, config, seed, slo_ttft, capacity, workers)
    everything = stage1 + stage2
    return _best(everything, share), everything


def choice(so: ScaledObjectSpec) -> dict:
    """What the search decides, as plain data (committed beside the report; a test holds the shipped
    overlay to it)."""
    return {
        "minReplicaCount": so.min_replica_count,
        "maxReplicaCount": so.max_replica_count,
        "scaleDownStabilizationWindowSeconds": so.behavior.scale_down.stabilization_window_seconds,
        "triggers": {t.name: t.threshold for t in so.triggers},
    }


def json_patch(so: ScaledObjectSpec, built: ScaledObjectSpec) -> list[dict]:
    """JSON-patch operations that turn the ScaledObject as built into `so`: thresholds, bounds, the
    scale-down window, dropped triggers. Only values change: queries, addresses and authentication
    stay the overlay's own."""
    ops: list[dict] = []
    kept = {t.name: t for t in so.triggers}
    for index, trigger in reversed(list(enumerate(built.triggers))):
        if trigger.name not in kept:
            ops.append({"op": "remove", "path": f"/spec/triggers/{index}"})
    for index, trigger in enumerate(built.triggers):
        new = kept.get(trigger.name)
        if new is not None and new.threshold != trigger.threshold:
            ops.append({"op": "replace", "path": f"/spec/triggers/{index}/metadata/threshold",
                        "value": f"{new.threshold:g}"})
    if so.min_replica_count != built.min_replica_count:
        ops.append({"op": "replace", "path": "/spec/minReplicaCount", "value": so.min_replica_count})
    if so.max_replica_count != built.max_replica_count:
        ops.append({"op": "replace", "path": "/spec/maxReplicaCount", "value": so.max_replica_count})
    window = so.behavior.scale_down.stabilization_window_seconds
    if window != built.behavior.scale_down.stabilization_window_seconds:
        ops.append({"op": "replace", "path": "/spec/advanced/horizontalPodAutoscalerConfig/behavior/scaleDown/"
                                             "stabilizationWindowSeconds", "value": window})
    return ops


def write_overlay(so: ScaledObjectSpec, source_overlay: str | Path, folder: str | Path) -> Path:
    """A kustomize overlay: the source overlay plus the proposal as a JSON patch, so that the proposal
    can be built, diffed and simulated like any other overlay."""
    import os

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    built = pick_scaled_object(build_overlay(source_overlay), str(source_overlay), so.name)
    (folder / "scaledobject-patch.yaml").write_text(
        "# Written by `python -m planner --search`: the proposed values (planner/README.md).\n"
        + yaml.safe_dump(json_patch(so, built), sort_keys=False))
    base = os.path.relpath(Path(source_overlay).resolve(), folder.resolve())
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "patches": [{"path": "scaledobject-patch.yaml",
                     "target": {"group": "keda.sh", "kind": "ScaledObject", "name": so.name}}],
    }
    (folder / "kustomization.yaml").write_text(
        "# Written by `python -m planner --search`: the proposed ScaledObject values on top of the overlay.\n"
        + yaml.safe_dump(kustomization, sort_keys=False))
    (folder / "choice.json").write_text(json.dumps(choice(so), indent=2) + "\n")
    return folder
