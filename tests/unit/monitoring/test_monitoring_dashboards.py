"""The generated dashboards: in sync with their generator, and importable into Grafana 11 as far as can be told offline."""

import json
import re
from pathlib import Path

import pytest
import yaml

from monitoring.grafana.dashboards import DASHBOARDS, DASHBOARDS_DIR, render

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
REGENERATE = "python -m monitoring.grafana.dashboards --out monitoring/grafana/dashboards/"
# Grafana 11 migrates any dashboard from schemaVersion 13 on; what the pinned SDK emits is 36.
SDK_SCHEMA_VERSION = 36
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                    "__from", "__to", "__dashboard", "__name", "__org", "__user", "timeFilter"}
CORE_PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap", "piechart"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def _committed() -> dict[str, dict]:
    return {name: json.loads((DASHBOARDS_DIR / name).read_text()) for name in DASHBOARDS}


def _all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _used_variables(text: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(text)}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_committed_json_is_what_the_generator_makes(name):
    committed = DASHBOARDS_DIR / name
    assert committed.exists(), f"{committed} missing: run {REGENERATE}"
    assert committed.read_text() == render(DASHBOARDS[name]()), f"{committed} is stale: run {REGENERATE}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_valid_for_grafana_11_import(name):
    dashboard = _committed()[name]
    assert dashboard["schemaVersion"] == SDK_SCHEMA_VERSION
    assert 8 <= len(dashboard["uid"]) <= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", dashboard["uid"])
    assert dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "an id would clash with another Grafana's"

    panels = _all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(isinstance(i, int) and i > 0 for i in ids)

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    defined = set(variables) | GRAFANA_BUILTINS

    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in CORE_PANEL_TYPES, panel["title"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']}: say what it tells an SRE"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["expr"].strip(), panel["title"]
            undefined = _used_variables(target["expr"]) - defined
            assert not undefined, f"{panel['title']}: undefined variables {undefined}"

    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert not _used_variables(json.dumps(variable["query"])) - defined


def test_panels_read_the_recording_rules():
    """Every recording rule shows on a dashboard: the dashboards and KEDA read the same numbers."""
    exprs = " ".join(t["expr"] for d in _committed().values() for p in _all_panels(d) for t in p.get("targets", []))
    recorded = set()
    for path in (REPO / "monitoring" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            recorded |= {rule["record"] for rule in group["rules"] if "record" in rule}
    unused = {name for name in recorded if not re.search(re.escape(name) + r"(?![\w:])", exprs)}
    assert not unused, f"recording rules no panel shows: {sorted(unused)}"


def test_the_sre_overview_shows_what_the_issue_asks_for():
    titles = {p["title"] for p in _all_panels(_committed()["sre-overview.json"])}
    assert {
        "Requests by route and status", "End-to-end latency", "Time to first token", "Tokens per second",
        "Queue time per request", "Pending requests", "Batch size", "Errors by reason", "GPU utilization",
        "GPU memory", "GPU power", "Replicas", "KEDA scaler metrics", "Model load time",
    } <= titles
    latency = next(p for p in _all_panels(_committed()["sre-overview.json"]) if p["title"] == "End-to-end latency")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]


def test_readme_explains_every_panel():
    readme = (REPO / "monitoring" / "README.md").read_text()
    for dashboard in _committed().values():
        for panel in _all_panels(dashboard):
            if panel["type"] != "row":
                assert f"**{panel['title']}**" in readme, f"monitoring/README.md does not explain {panel['title']!r}"


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards():
    provisioning = REPO / "monitoring" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    providers = yaml.safe_load((provisioning / "dashboards" / "qwen3-vl.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
