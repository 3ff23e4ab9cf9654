"""One time-to-first-token objective (monitoring/objective.yml): the alert rules, the frontend's histogram,
KEDA's queue-time target and the planner all use the same numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frontend.metrics import LATENCY_BUCKETS
from monitoring.objective import load_objective
from planner.scaledobject import load_scaled_object
from planner.traffic import constant, write_csv

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "monitoring" / "prometheus" / "rules"
OBJECTIVE = load_objective()


def _rules(name: str) -> list[dict]:
    return [rule for group in yaml.safe_load((RULES / name).read_text())["groups"] for rule in group["rules"]]


def _alerts(name: str) -> list[dict]:
    return [rule for rule in _rules("alerts.yml") if rule.get("alert") == name]


def test_the_burn_rate_rules_count_the_objectives_bucket_of_the_frontend_histogram():
    # prometheus_client writes a bucket bound as Go prints a float: 2 -> "2.0"
    assert OBJECTIVE.seconds in LATENCY_BUCKETS
    ratios = [rule for rule in _rules("recording.yml") if rule.get("record", "").startswith("frontend:ttft_over_objective:")]
    assert len(ratios) == 7
    for rule in ratios:
        assert re.findall(r'le="([^"]+)"', rule["expr"]) == [repr(float(OBJECTIVE.seconds))], rule["record"]


def test_the_burn_rate_alerts_burn_the_objectives_error_budget():
    burns = _alerts("TimeToFirstTokenBudgetBurn")
    assert {a["labels"]["severity"] for a in burns} == {"critical", "warning"}
    for alert in burns:
        budgets = {float(b) for b in re.findall(r"\* ([0-9.]+)\)", alert["expr"])}
        assert budgets and all(b == pytest.approx(OBJECTIVE.error_budget) for b in budgets), alert["expr"]
        text = alert["annotations"]["summary"] + alert["annotations"]["description"]
        assert f"{OBJECTIVE.seconds:g} s" in text and f"{100 * OBJECTIVE.share:g} %" in alert["annotations"]["description"]


def test_the_queue_alert_fires_at_the_queue_budget():
    (alert,) = _alerts("TritonQueueTimeAboveObjective")
    threshold = float(re.fullmatch(r"\S+ > ([0-9.]+)", alert["expr"].strip())[1])
    assert threshold == OBJECTIVE.queue_budget_seconds
    assert f"{OBJECTIVE.seconds:g} s" in alert["annotations"]["description"]


@pytest.mark.parametrize("overlay", ["gpu", "gpu-shared"])
def test_keda_scales_out_at_the_queue_target(overlay):
    so = load_scaled_object(REPO / "k8s" / "overlays" / overlay)
    (queue,) = [t for t in so.triggers if t.signal == "queue_time"]
    assert queue.threshold == OBJECTIVE.queue_target_seconds


def test_the_planner_judges_policies_by_the_same_objective(tmp_path):
    trace = tmp_path / "minute.csv"
    write_csv(constant(3, rps=1.0, seconds=60), trace)
    run = subprocess.run(
        [sys.executable, "-m", "planner", "--overlay", REPO / "tests/unit/planner/data/overlay",
         "--profile", REPO / "planner/profiles/cpu-tiny.json", "--trace", trace, "--out", tmp_path],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"objective: TTFT <= {OBJECTIVE.seconds:g} s for {100 * OBJECTIVE.share:g} % of requests" in run.stdout


def test_the_dashboard_draws_the_same_targets():
    from monitoring.grafana import dashboards

    assert dashboards.QUEUE_TIME_TARGET_S == OBJECTIVE.queue_target_seconds
    assert dashboards.QUEUE_TIME_OBJECTIVE_S == OBJECTIVE.queue_budget_seconds
    assert dashboards.TTFT_ERROR_BUDGET == pytest.approx(OBJECTIVE.error_budget)
    so = load_scaled_object(REPO / "k8s" / "overlays" / "gpu")
    (occupancy,) = [t for t in so.triggers if t.signal == "occupancy"]
    assert dashboards.OCCUPANCY_TARGET == occupancy.threshold
