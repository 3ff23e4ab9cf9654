"""The local Prometheus config (make monitor) and the dcgm-exporter test double, without starting Prometheus."""

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.dcgm.counters import load_counters
from stack.prometheus import RULES_DIR, LocalTargets, local_config
from tests.doubles.dcgm_exporter import FB_TOTAL_MIB, DcgmExporterDouble, GpuAssignment

pytestmark = pytest.mark.unit


def test_local_config_labels_targets_like_kubernetes_relabeling_does():
    config = local_config(LocalTargets(triton=["127.0.0.1:18002", "127.0.0.1:28002"], frontend=["127.0.0.1:18080"],
                                       dcgm_exporter=["127.0.0.1:19400"]), scrape_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"triton", "frontend", "dcgm-exporter"}
    assert [g["labels"] for g in jobs["triton"]["static_configs"]] == [
        {"namespace": "local", "pod": "triton-0"}, {"namespace": "local", "pod": "triton-1"}
    ]
    assert jobs["triton"]["static_configs"][1]["targets"] == ["127.0.0.1:28002"]
    assert jobs["dcgm-exporter"]["honor_labels"] is True
    assert jobs["frontend"]["scrape_interval"] == "1s"
    assert config["rule_files"] == [str(RULES_DIR / "*.yml")]


def test_local_config_leaves_out_services_given_no_target_and_refuses_bad_ones():
    config = local_config(LocalTargets(frontend=[], dcgm_exporter=[]))
    assert [job["job_name"] for job in config["scrape_configs"]] == ["triton"]
    with pytest.raises(ValueError, match="nothing to scrape"):
        local_config(LocalTargets(triton=[], frontend=[], dcgm_exporter=[]))
    with pytest.raises(ValueError, match="'localhost' is not host:port"):
        local_config(LocalTargets(triton=["localhost"]))


def _scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_dcgm_double_serves_every_enabled_counter_per_gpu_with_pod_labels():
    gpus = [GpuAssignment("local", "triton-0"), GpuAssignment("local", "triton-0"), GpuAssignment("prod", "triton-1")]
    with DcgmExporterDouble(gpus) as double:
        first = _scrape(double.url)
        time.sleep(0.2)
        second = _scrape(double.url)
    counters = load_counters()
    assert set(first) == {c.field for c in counters}
    for counter in counters:
        samples = first[counter.field]
        assert len(samples) == len(gpus), counter.field
        assert {(s.labels["namespace"], s.labels["pod"]) for s in samples} == {("local", "triton-0"), ("prod", "triton-1")}
        assert {s.labels["gpu"] for s in samples} == {"0", "1", "2"}

    def values(scrape, field):
        return [s.value for s in scrape[field]]

    for util in values(first, "DCGM_FI_DEV_GPU_UTIL"):
        assert 0 <= util <= 100
    for used, free, reserved in zip(values(first, "DCGM_FI_DEV_FB_USED"), values(first, "DCGM_FI_DEV_FB_FREE"),
                                    values(first, "DCGM_FI_DEV_FB_RESERVED")):
        assert used + free + reserved == FB_TOTAL_MIB
    for power in values(first, "DCGM_FI_DEV_POWER_USAGE"):
        assert 50 < power < 700
    for counter in (c.field for c in counters if c.prom_type == "counter"):
        assert all(b >= a for a, b in zip(values(first, counter), values(second, counter))), counter
    energy = zip(values(first, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"), values(second, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"))
    assert all(b > a for a, b in energy), "a GPU drawing power uses energy"


def test_dcgm_double_answers_404_off_metrics_and_refuses_bad_pod_specs():
    with DcgmExporterDouble([GpuAssignment("local", "triton-0")]) as double:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://{double.address}/", timeout=5)
        assert error.value.code == 404
    with pytest.raises(ValueError, match="NAMESPACE/POD"):
        GpuAssignment.parse("triton-0")
    with pytest.raises(ValueError, match="at least one GPU"):
        DcgmExporterDouble([])
