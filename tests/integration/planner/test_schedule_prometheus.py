"""A schedule of minimum replicas learnt from the real Prometheus: sixteen hours of Triton's request
counter (backfilled with promtool, as a cluster's Prometheus would hold them) read back through the
range query API, and the windows put a cold start ahead of the busy hours."""

import shutil
import subprocess
import time

import pytest

from planner.schedule import DAY, daily_rate, plan, rate_from_prometheus
from stack.ports import free_port
from stack.prometheus import PrometheusServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus_with_history(tmp_path_factory):
    """Triton's counter at 2 requests/s, and 20 from ten to six hours ago."""
    if not (shutil.which("promtool") and shutil.which("prometheus")):
        pytest.fail("prometheus and promtool are needed: make system-deps (Debian's prometheus)")
    folder = tmp_path_factory.mktemp("history")
    now = int(time.time())
    lines = ["# TYPE nv_inference_request_success counter"]
    total = 0.0
    for t in range(now - 16 * 3600, now - 120, 60):
        total += 60 * (20.0 if 6 * 3600 <= now - t <= 10 * 3600 else 2.0)
        lines.append(f'nv_inference_request_success{{namespace="qwen3-vl",pod="triton-0"}} {total} {t}')
    (folder / "history.om").write_text("\n".join(lines + ["# EOF"]) + "\n")
    data = folder / "data"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(folder / "history.om"), str(data)],
                   check=True, capture_output=True, timeout=120)
    server = PrometheusServer(port=free_port(), config={"global": {"scrape_interval": "15s"}}, data_dir=str(data))
    server.start()
    yield server, now
    server.stop()


def test_the_busy_hours_get_pods_a_cold_start_ahead(prometheus_with_history):
    server, now = prometheus_with_history
    times, rates = rate_from_prometheus(server.url, days=15 / 24, step=300, end=now)
    assert max(rates) == pytest.approx(20.0, rel=0.05)
    assert sorted(rates)[len(rates) // 2] == pytest.approx(2.0, rel=0.05)
    windows = plan(daily_rate(times, rates), capacity=5.0, lead_seconds=1800.0, min_replicas=1, max_replicas=8,
                   utilization=0.8)
    busy = [w for w in windows if w.replicas == 5]  # ceil(20 / (5 x 0.8))
    assert len(busy) == 1
    start, end = (now - 10 * 3600) % DAY, (now - 6 * 3600) % DAY
    ahead = (busy[0].start - start + DAY / 2) % DAY - DAY / 2  # signed, across midnight
    assert -1800 - 900 - 300 <= ahead <= -1800 + 300  # half an hour earlier, to the 15-minute bin
    assert abs((busy[0].end - end + DAY / 2) % DAY - DAY / 2) <= 900 + 300
