"""`--search`: the targets and the scale-down pace that meet the objective with the fewest GPU-hours
on a trace, found by simulating a grid around the ScaledObject as built.

What stays as built: the triggers (each has its job, k8s/README.md); the queue-time target, a
quarter of the time-to-first-token objective (monitoring/objective.py) that the alerts and the
dashboard share; minReplicaCount, the availability floor the simulator does not price (a node drain
takes one pod at a time, and a lone pod's drain is an outage of a cold start); maxReplicaCount,
the headroom bursts use. Costs within `NEAR` of the fewest count as equal (one seed's noise), and
the most cautious of those wins: the lowest targets, then the slowest scale-down."""

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

OCCUPANCY_GRID = (0.6, 0.7, 0.8, 0.9)
WAITING_GRID = (4.0, 8.0, 16.0)
NEAR = 0.01
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
    """Occupancy and waiting-requests targets, the rest as built."""
    signals = {t.signal for t in so.triggers}
    occupancy = OCCUPANCY_GRID if "occupancy" in signals else (None,)
    waiting = WAITING_GRID if "waiting" in signals else (None,)
    return [_thresholds(so, {k: v for k, v in (("occupancy", occ), ("waiting", wait)) if v is not None}, set())
            for occ, wait in product(occupancy, waiting)]


def _evaluate(specs, trace, profile, config, seed, slo_ttft, capacity, workers) -> list[Candidate]:
    policies = [Policy(f"candidate {i}", scaled_object=s) for i, s in enumerate(specs)]
    digests = run_policies(trace, profile, policies, config, seed, slo_ttft, capacity, workers)
    return [Candidate(s, d.summary) for s, d in zip(specs, digests)]


def _best(candidates: list[Candidate], share: float) -> Candidate | None:
    feasible = [c for c in candidates if c.summary.meets(share)]
    if not feasible:
        return None
    fewest = min(c.summary.gpu_hours for c in feasible)
    near = [c for c in feasible if c.summary.gpu_hours <= fewest * (1 + NEAR)]
    return min(near, key=lambda c: (tuple(t.threshold for t in c.so.triggers),
                                    -c.so.behavior.scale_down.stabilization_window_seconds))


def search(so: ScaledObjectSpec, profile: PodProfile, trace: Trace, config: SimConfig, seed: int, slo_ttft: float,
           share: float, capacity: float, workers: int) -> tuple[Candidate | None, list[Candidate]]:
    """Stage 1: the targets (`_stage1`), the rest as built. Stage 2: around the best, the scale-down
    stabilization window."""
    stage1 = _evaluate(_stage1(so), trace, profile, config, seed, slo_ttft, capacity, workers)
    best = _best(stage1, share) or max(stage1, key=lambda c: c.summary.within_slo)
    specs = [s for s in (_scale_down_window(best.so, w) for w in SCALE_DOWN_WINDOW_GRID) if s != best.so]
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
    stay the overlay's own. A `test` of each touched trigger's name guards the indices."""
    kept = {t.name: t for t in so.triggers}
    tests, removes, replaces = [], [], []
    index = 0
    for original, trigger in enumerate(built.triggers):
        new = kept.get(trigger.name)
        if new is None:
            tests.append({"op": "test", "path": f"/spec/triggers/{original}/name", "value": trigger.name})
            removes.insert(0, {"op": "remove", "path": f"/spec/triggers/{original}"})
            continue
        if new.threshold != trigger.threshold:
            tests.append({"op": "test", "path": f"/spec/triggers/{original}/name", "value": trigger.name})
            replaces.append({"op": "replace", "path": f"/spec/triggers/{index}/metadata/threshold",
                             "value": f"{new.threshold:g}"})
        index += 1
    if so.min_replica_count != built.min_replica_count:
        replaces.append({"op": "replace", "path": "/spec/minReplicaCount", "value": so.min_replica_count})
    if so.max_replica_count != built.max_replica_count:
        replaces.append({"op": "replace", "path": "/spec/maxReplicaCount", "value": so.max_replica_count})
    window = so.behavior.scale_down.stabilization_window_seconds
    if window != built.behavior.scale_down.stabilization_window_seconds:
        replaces.append({"op": "replace", "path": "/spec/advanced/horizontalPodAutoscalerConfig/behavior/scaleDown/"
                                                  "stabilizationWindowSeconds", "value": window})
    return tests + removes + replaces


def write_overlay(so: ScaledObjectSpec, source_overlay: str | Path, folder: str | Path) -> Path:
    """A kustomize overlay: the source overlay plus the proposal as a JSON patch, so that the proposal
    can be built, diffed and simulated like any other overlay."""
    import os

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    built = pick_scaled_object(build_overlay(source_overlay), str(source_overlay), so.name)
    ops = json_patch(so, built)
    base = os.path.relpath(Path(source_overlay).resolve(), folder.resolve())
    kustomization: dict = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                           "resources": [base]}
    if ops:  # none when the overlay already holds the proposal
        (folder / "scaledobject-patch.yaml").write_text(
            "# Written by `python -m planner --search`: the proposed values (planner/README.md).\n"
            + yaml.safe_dump(ops, sort_keys=False))
        kustomization["patches"] = [{"path": "scaledobject-patch.yaml",
                                     "target": {"group": "keda.sh", "kind": "ScaledObject", "name": so.name}}]
    (folder / "kustomization.yaml").write_text(
        "# Written by `python -m planner --search`: the proposed ScaledObject values on top of the overlay.\n"
        + yaml.safe_dump(kustomization, sort_keys=False))
    (folder / "choice.json").write_text(json.dumps(choice(so), indent=2) + "\n")
    return folder
