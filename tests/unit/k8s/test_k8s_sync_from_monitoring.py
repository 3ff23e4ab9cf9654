"""The rules and counters under k8s/ are the ones in monitoring/, and the sync script keeps them so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_manifests import K8S, REPO

pytestmark = pytest.mark.unit

SCRIPT = K8S / "sync_from_monitoring.py"
RULES_DIR = REPO / "monitoring" / "prometheus" / "rules"
PROMETHEUS_OPERATOR = K8S / "components" / "prometheus-operator"


def run_script(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(repo / "k8s" / "sync_from_monitoring.py"), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_generated_files_are_up_to_date() -> None:
    result = run_script(REPO, "--check")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("rules_file", sorted(RULES_DIR.glob("*.yml")), ids=lambda p: p.name)
def test_prometheus_rule_carries_exactly_the_monitoring_rule_groups(rules_file: Path) -> None:
    rule = yaml.safe_load((PROMETHEUS_OPERATOR / f"prometheusrule-{rules_file.stem}.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    kustomization = yaml.safe_load((PROMETHEUS_OPERATOR / "kustomization.yaml").read_text())
    assert f"prometheusrule-{rules_file.stem}.yaml" in kustomization["resources"]


def test_rendered_prometheus_rules_hold_every_recording_rule(rendered) -> None:
    recorded = {
        rule["record"]
        for path in RULES_DIR.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    deployed = {
        rule["record"]
        for obj in rendered["gpu"] if obj["kind"] == "PrometheusRule"
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    assert recorded and deployed == recorded


def test_counters_copy_is_byte_identical() -> None:
    copy = K8S / "components" / "dcgm-exporter" / "counters.csv"
    assert copy.read_bytes() == (REPO / "monitoring" / "dcgm" / "counters.csv").read_bytes()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The parts of the tree the script reads and writes, in a scratch folder."""
    shutil.copytree(REPO / "monitoring", tmp_path / "monitoring")
    shutil.copytree(K8S, tmp_path / "k8s")
    return tmp_path


def test_check_names_a_stale_rule_file_and_a_sync_fixes_it(repo_copy: Path) -> None:
    rules = repo_copy / "monitoring" / "prometheus" / "rules" / "recording.yml"
    rules.write_text(rules.read_text().replace("interval: 5s", "interval: 10s", 1))
    check = run_script(repo_copy, "--check")
    assert check.returncode == 1
    assert "k8s/components/prometheus-operator/prometheusrule-recording.yaml" in check.stderr
    assert run_script(repo_copy).returncode == 0
    synced = yaml.safe_load(
        (repo_copy / "k8s" / "components" / "prometheus-operator" / "prometheusrule-recording.yaml").read_text()
    )
    assert synced["spec"]["groups"][0]["interval"] == "10s"
    assert run_script(repo_copy, "--check").returncode == 0


def test_check_names_a_stale_counters_copy(repo_copy: Path) -> None:
    counters = repo_copy / "monitoring" / "dcgm" / "counters.csv"
    counters.write_text(counters.read_text() + "DCGM_FI_DEV_FAN_SPEED, gauge, Fan speed (in %).\n")
    check = run_script(repo_copy, "--check")
    assert check.returncode == 1
    assert "k8s/components/dcgm-exporter/counters.csv" in check.stderr


def test_a_rule_file_that_is_not_one_is_refused(repo_copy: Path) -> None:
    (repo_copy / "monitoring" / "prometheus" / "rules" / "broken.yml").write_text("rules: []\n")
    result = run_script(repo_copy, "--check")
    assert result.returncode != 0
    assert "not a Prometheus rule file" in result.stderr


@pytest.mark.parametrize("build", ["gpu", "gpu-shared"])
def test_every_dashboard_ships_as_a_config_map_for_the_grafana_sidecar(rendered, build: str) -> None:
    shipped = {
        name: obj for obj in rendered[build] if obj["kind"] == "ConfigMap"
        for name in obj.get("data", {}) if name.endswith(".json")
    }
    sources = {path.name: path for path in (REPO / "monitoring" / "grafana" / "dashboards").glob("*.json")}
    assert sources and set(shipped) == set(sources)
    for name, config_map in shipped.items():
        assert config_map["data"][name] == sources[name].read_text()
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_check_names_a_removed_dashboard_left_behind(repo_copy: Path) -> None:
    dashboard = sorted((repo_copy / "monitoring" / "grafana" / "dashboards").glob("*.json"))[0]
    dashboard.rename(dashboard.with_name(f"renamed-{dashboard.name}"))
    check = run_script(repo_copy, "--check")
    assert check.returncode == 1
    assert f"k8s/components/grafana-dashboards/{dashboard.name}" in check.stderr
    assert run_script(repo_copy).returncode == 0
    assert not (repo_copy / "k8s" / "components" / "grafana-dashboards" / dashboard.name).exists()
    assert run_script(repo_copy, "--check").returncode == 0
