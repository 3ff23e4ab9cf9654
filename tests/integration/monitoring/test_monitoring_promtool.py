"""promtool on the real files, and the Kubernetes scrape config's relabeling run by the real Prometheus.

Debian builds Prometheus without Kubernetes service discovery, and there is no API
server here anyway: the relabeling test feeds the same `__meta_kubernetes_*`
labels that pod discovery produces through file_sd, so everything after
discovery (keep/drop, namespace and pod labels, honor_labels) is the real thing.
"""

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from stack.ports import free_port
from stack.prometheus import RULES_DIR, LocalTargets, PrometheusServer, local_config
from tests.doubles.dcgm_exporter import DcgmExporterDouble, GpuAssignment

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = Path(__file__).resolve().parents[3] / "monitoring" / "prometheus"


def run(*command: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_promtool_check_rules(promtool):
    files = sorted(str(p) for p in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    output = run(promtool, "check", "rules", *files)
    assert output.count("SUCCESS") == len(files)


def test_promtool_unit_tests_of_every_rule_pass(promtool):
    files = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*_test.yml"))
    assert len(files) == 2
    output = run(promtool, "test", "rules", *files)
    assert output.count("SUCCESS") == len(files)


def test_promtool_test_rules_catches_a_wrong_expectation(promtool, tmp_path):
    """The promtool suite is not vacuous: a hand-computed value off by 0.01 fails it."""
    test = (PROMETHEUS_DIR / "tests" / "recording_test.yml").read_text()
    wrong = test.replace("../rules/recording.yml", str(RULES_DIR / "recording.yml")).replace(
        "value: 0.75\n", "value: 0.76\n", 1)
    (tmp_path / "wrong_test.yml").write_text(wrong)
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "wrong_test.yml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "7.6E-01" in result.stdout + result.stderr


def test_promtool_check_config_of_the_local_config(promtool, tmp_path):
    config = local_config(LocalTargets())
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    output = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    assert "SUCCESS" in output and "rules found" in output


def _kubernetes_config_on_file_sd(sd_file: Path) -> dict:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES_DIR / "*.yml")]
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}], job["job_name"]
        job["file_sd_configs"] = [{"files": [str(sd_file)]}]
    return config


def _pod(address: str, namespace: str, pod: str, labels: dict[str, str], port_name: str,
         phase: str = "Running", container: str = "main") -> dict:
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_node_name": "gpu-node-1",
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_port_name": port_name,
    }
    meta |= {f"__meta_kubernetes_pod_label_{k.replace('.', '_').replace('/', '_').replace('-', '_')}": v
             for k, v in labels.items()}
    return {"targets": [address], "labels": meta}


def test_kubernetes_config_checks_and_its_relabeling_yields_namespace_and_pod(promtool, tmp_path):
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: these targets are only looked at, not scraped
    triton = {"app.kubernetes.io/name": "triton", "app.kubernetes.io/component": "inference-server"}
    with DcgmExporterDouble([GpuAssignment("qwen3-vl", "triton-7d9f-abcde")]) as dcgm:
        pods = [
            _pod(closed, "qwen3-vl", "triton-7d9f-abcde", triton, "metrics", container="triton"),
            _pod(closed, "qwen3-vl", "triton-7d9f-abcde", triton, "grpc", container="triton"),
            _pod(closed, "qwen3-vl", "triton-7d9f-abcde", triton, "http", container="triton"),
            _pod(closed, "qwen3-vl", "triton-7d9f-pendng", triton, "metrics", phase="Pending"),
            _pod(closed, "qwen3-vl", "frontend-55c-xyz12", {"app.kubernetes.io/component": "frontend"}, "http"),
            _pod(closed, "other", "web-1", {"app.kubernetes.io/name": "web"}, "metrics"),
            _pod(dcgm.address, "gpu-operator", "dcgm-exporter-q8x2p", {"app.kubernetes.io/name": "dcgm-exporter"},
                 "metrics"),
        ]
        sd_file = tmp_path / "pods.json"
        sd_file.write_text(json.dumps(pods))
        config = _kubernetes_config_on_file_sd(sd_file)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        output = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
        assert "SUCCESS" in output

        fast = copy.deepcopy(config)
        for job in fast["scrape_configs"]:
            job["scrape_interval"] = job["scrape_timeout"] = "1s"
        with PrometheusServer(port=free_port(), config=fast) as prometheus:
            prometheus.wait_for_targets(["dcgm-exporter"], timeout=60)
            active = prometheus.api("targets", state="active")["activeTargets"]
            kept = sorted((t["labels"]["job"], t["labels"]["namespace"], t["labels"]["pod"]) for t in active
                          if "namespace" in t["labels"])
            # Every job sees every pod; each keeps its own, on its metrics port only, running only.
            assert kept == [
                ("dcgm-exporter", "gpu-operator", "dcgm-exporter-q8x2p"),
                ("frontend", "qwen3-vl", "frontend-55c-xyz12"),
                ("triton", "qwen3-vl", "triton-7d9f-abcde"),
            ]
            triton_target = next(t for t in active if t["labels"]["job"] == "triton")
            assert triton_target["labels"]["container"] == "triton"
            assert triton_target["scrapeInterval"] == "1s"

            # honor_labels: the GPU is attributed to the Triton pod that holds it, not to the exporter.
            series = prometheus.query('DCGM_FI_DEV_GPU_UTIL{job="dcgm-exporter"}')
            assert [(s["metric"]["namespace"], s["metric"]["pod"]) for s in series] == [
                ("qwen3-vl", "triton-7d9f-abcde")
            ]
            assert "exported_pod" not in series[0]["metric"]
