"""The rule files against the contract, and their promtool tests against the rules (coverage, not values)."""

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS = REPO / "monitoring" / "prometheus"


def _rules(kind: str) -> list[dict]:
    rules = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if kind in rule]
    return rules


def _contract_rule_names() -> set[str]:
    text = (REPO / "docs" / "contracts.md").read_text()
    section = text[text.index("## Recording rules"):]
    return set(re.findall(r"^\| `([a-z0-9_]+:[a-z0-9_:]+)` \|", section, flags=re.MULTILINE))


def _tests(name: str) -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "tests" / name).read_text())["tests"]


def test_recording_rules_are_exactly_the_contracts_names():
    recorded = [rule["record"] for rule in _rules("record")]
    assert len(recorded) == len(set(recorded)), "a recording rule is defined twice"
    contract = _contract_rule_names()
    assert len(contract) >= 13, "could not read the rule table of docs/contracts.md"
    assert set(recorded) == contract


def test_per_pod_and_per_namespace_rules_keep_exactly_their_labels():
    for rule in _rules("record"):
        name, expr = rule["record"], rule["expr"]
        if name.startswith("frontend:"):
            assert "namespace" in expr, name
        elif name.endswith(":namespace"):
            assert re.search(r"by \(namespace\)", expr), f"{name} must aggregate by namespace only"
        else:
            assert re.search(r"by \(namespace, pod\)", expr), f"{name} must aggregate by namespace and pod"


def test_every_alert_says_what_to_do():
    alerts = _rules("alert")
    assert {a["alert"] for a in alerts} == {
        "TritonQueueTimeAboveObjective", "TimeToFirstTokenBudgetBurn", "FrontendErrorRatioHigh", "TritonDown",
        "TritonNoReadyReplicas", "GPUMemoryNearlyFull", "TritonReplicasPinnedAtMax", "ScalerMetricMissing",
        "KedaScalerErrors", "KedaScaledObjectErrors",
    }
    for alert in alerts:
        annotations = alert["annotations"]
        for key in ("summary", "description", "runbook"):
            assert len(annotations.get(key, "")) > 20, f"{alert['alert']}: {key} missing or too short"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert "for" in alert, f"{alert['alert']} would fire on a single bad evaluation"




def test_every_recording_rule_has_a_promtool_test_with_expected_values():
    tested = {case["expr"] for test in _tests("recording_test.yml") for case in test["promql_expr_test"]
              if case["exp_samples"]}
    missing = {rule["record"] for rule in _rules("record")} - tested
    assert not missing, f"no promtool test with expected samples for {sorted(missing)}"


def test_every_alert_has_a_promtool_test_that_fires_it_and_one_that_does_not():
    fired, quiet = set(), set()
    for test in _tests("alerts_test.yml"):
        for case in test["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {a["alert"] for a in _rules("alert")}
    assert alerts - fired == set(), f"never shown firing: {sorted(alerts - fired)}"
    assert alerts - quiet == set(), f"never shown quiet: {sorted(alerts - quiet)}"


def test_kubernetes_scrape_jobs_label_every_series_with_namespace_and_pod():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"triton", "frontend", "dcgm-exporter", "kube-state-metrics", "keda-operator"} <= set(jobs)
    for name in ("triton", "frontend", "dcgm-exporter"):
        targets = {r.get("target_label") for r in jobs[name]["relabel_configs"]}
        assert {"namespace", "pod"} <= targets, name
    # The autoscaler's inputs are sampled fast enough for a 15 s KEDA poll and rate() over 1m.
    for name in ("triton", "dcgm-exporter"):
        assert jobs[name]["scrape_interval"] == "5s"
    # dcgm-exporter's own pod labels name the GPU's owner and must win.
    assert jobs["dcgm-exporter"]["honor_labels"] is True
    assert config["rule_files"] == ["rules/*.yml"]
