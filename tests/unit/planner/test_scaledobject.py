"""The ScaledObject is read from a built overlay with the real kubectl kustomize."""

import json
from pathlib import Path

import pytest
import yaml

from planner.scaledobject import ScaledObjectError, build_overlay, load_overlay, parse_scaled_object, pick_scaled_object
from planner.search import choice

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
DATA = Path(__file__).parent / "data"


def _raw(overlay):
    return next(d for d in yaml.safe_load_all(build_overlay(overlay)) if d and d["kind"] == "ScaledObject")


@pytest.mark.parametrize("overlay", [ROOT / "k8s/overlays/gpu", DATA / "overlay"])
def test_values_match_the_built_yaml(overlay):
    raw = _raw(overlay)["spec"]
    so, pod = load_overlay(overlay)
    assert so.min_replica_count == raw.get("minReplicaCount", 0)
    assert so.max_replica_count == raw.get("maxReplicaCount", 100)
    assert so.polling_interval == raw.get("pollingInterval", 30)
    assert so.cooldown_period == raw.get("cooldownPeriod", 300)
    assert [t.name for t in so.triggers] == [t["name"] for t in raw["triggers"]]
    assert [t.threshold for t in so.triggers] == [float(t["metadata"]["threshold"]) for t in raw["triggers"]]
    assert [t.metric_type for t in so.triggers] == [t.get("metricType", "AverageValue") for t in raw["triggers"]]
    down = raw["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert so.behavior.scale_down.stabilization_window_seconds == down["stabilizationWindowSeconds"]
    assert [p.value for p in so.behavior.scale_down.policies] == [p["value"] for p in down["policies"]]
    assert so.fallback.replicas == raw["fallback"]["replicas"]
    assert pod.termination_grace_seconds > 0


def test_signals_come_from_the_recording_rule_names():
    so, _ = load_overlay(ROOT / "k8s/overlays/gpu")
    assert {t.signal for t in so.triggers} == {"queue_time", "waiting", "occupancy", "gpu_utilization_while_waiting"}


def test_unknown_query_is_a_clear_error():
    doc = {"kind": "ScaledObject", "metadata": {"name": "x"}, "spec": {"triggers": [
        {"type": "prometheus", "metadata": {"query": "sum(up)", "threshold": "1"}}]}}
    with pytest.raises(ScaledObjectError, match="recording rules"):
        parse_scaled_object(doc)


def test_no_scaledobject_is_a_clear_error():
    with pytest.raises(ScaledObjectError, match="no ScaledObject"):
        pick_scaled_object("kind: Deployment\nmetadata: {name: a}\n", "test")


def test_not_a_kustomize_directory(tmp_path):
    with pytest.raises(ScaledObjectError, match="kustomization.yaml"):
        load_overlay(tmp_path)


@pytest.mark.parametrize(
    "query,signal",
    [
        ('sum(qwen3vl:batch_size:avg1m{namespace="qwen3-vl"})', "batch_size"),
        ('avg(qwen3vl:batch_size:avg1m{namespace="qwen3-vl"})', "batch_size_mean"),
    ],
)
def test_busy_slots_query_is_summed_or_averaged_as_written(query, signal):
    doc = {"kind": "ScaledObject", "metadata": {"name": "x"}, "spec": {"triggers": [
        {"type": "prometheus", "metricType": "AverageValue", "metadata": {"query": query, "threshold": "48"}}]}}
    assert parse_scaled_object(doc).triggers[0].signal == signal


def test_the_gpu_overlay_ships_what_the_planner_chose():
    """The thresholds, bounds and scale-down window of k8s/overlays/gpu are the proposal of
    `python -m planner ... --trace daynight --search` on the H200 profile (docs/planner/README.md)."""
    search = json.loads((ROOT / "docs/planner/h200/daynight-search.json").read_text())
    so, _ = load_overlay(ROOT / "k8s/overlays/gpu")
    assert search["profile"] == "h200-qwen3-vl-4b" and search["overlay"] == "k8s/overlays/gpu"
    assert choice(so) == search["proposal"]


@pytest.mark.parametrize("text,expected", [("false", False), ("False", False), ("0", False), ("true", True), ("t", True)])
def test_ignore_null_values_is_read_as_keda_parses_it(text, expected):
    doc = {"kind": "ScaledObject", "metadata": {"name": "x"}, "spec": {"triggers": [
        {"type": "prometheus", "metadata": {"query": 'qwen3vl:occupancy:namespace{namespace="a"}', "threshold": "1",
                                            "ignoreNullValues": text}}]}}
    assert parse_scaled_object(doc).triggers[0].ignore_null_values is expected


def test_ignore_null_values_defaults_to_keda_default_and_rejects_nonsense():
    doc = {"kind": "ScaledObject", "metadata": {"name": "x"}, "spec": {"triggers": [
        {"type": "prometheus", "metadata": {"query": 'qwen3vl:occupancy:namespace{namespace="a"}', "threshold": "1"}}]}}
    assert parse_scaled_object(doc).triggers[0].ignore_null_values is True
    doc["spec"]["triggers"][0]["metadata"]["ignoreNullValues"] = "maybe"
    with pytest.raises(ScaledObjectError, match="ignoreNullValues"):
        parse_scaled_object(doc)


def test_a_proposal_is_written_as_a_patch_kustomize_applies(tmp_path):
    """Other targets, a trigger dropped, another scale-down window: the overlay written for the
    proposal builds into exactly that ScaledObject, with the queries and addresses of the original."""
    from dataclasses import replace as changed

    from planner.search import _scale_down_window, _thresholds, write_overlay

    built, _ = load_overlay(DATA / "overlay")
    proposal = _scale_down_window(_thresholds(built, {"occupancy": 0.75, "waiting": 12.0}, {"queue_time"}), 300)
    proposal = changed(proposal, min_replica_count=2)
    folder = write_overlay(proposal, DATA / "overlay", tmp_path / "proposed")
    read, _ = load_overlay(folder)
    assert choice(read) == choice(proposal)
    assert [t.query for t in read.triggers] == [t.query for t in built.triggers if t.signal != "queue_time"]
    assert json.loads((folder / "choice.json").read_text()) == choice(proposal)
