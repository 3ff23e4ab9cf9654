"""Every rule, alert, dashboard query and autoscaler query against the real stack under load.

The real Triton (tiny checkpoint) and the real frontend serve a bounded burst of
streaming chat completions while the real Prometheus scrapes them every second,
together with the dcgm-exporter test double (no GPU here). Queries are then
evaluated at the end of the burst (instant queries with `time=`), so the idle
phase that follows does not change what the under-load tests see.

Only kube-state-metrics and KEDA cannot run here (they need a Kubernetes API
server): queries on their metrics must parse, and are listed in
KUBERNETES_ONLY so that no other query can silently return nothing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from monitoring.grafana.dashboards import DASHBOARDS, render
from stack.frontend import FrontendServer
from stack.ports import free_port
from stack.prometheus import LOCAL_NAMESPACE, LocalTargets, PrometheusServer, local_config
from tests.doubles.dcgm_exporter import DcgmExporterDouble, GpuAssignment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[3]
RULES_DIR = REPO / "monitoring" / "prometheus" / "rules"
CONCURRENCY = 16  # twice the engine's 8 slots: requests must queue in Triton and batch in the engine
LOAD_SECONDS = 40
MAX_REQUESTS = 2000
MAX_TOKENS = 32
KUBERNETES_ONLY = ("kube_deployment_status_", "kube_horizontalpodautoscaler_", "keda_scaler_", "keda_scaled_object_")


@dataclass
class LoadRun:
    started: float
    ended: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)


@dataclass
class Stack:
    prometheus: PrometheusServer
    load: LoadRun

    def at_end_of_load(self, expr: str) -> list[dict]:
        return self.prometheus.query(expr, at=self.load.ended)


def _picture(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def _drive_load(url: str, run: LoadRun) -> None:
    """CONCURRENCY clients sending streaming chat completions back to back until LOAD_SECONDS pass; one in
    four asks about one of three pictures (the caches' panels need images, sent again)."""
    deadline = time.monotonic() + LOAD_SECONDS
    sent = 0
    pictures = [_picture(colour) for colour in ((200, 40, 40), (40, 200, 40), (40, 40, 200))]

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.monotonic() < deadline and sent < MAX_REQUESTS:
            sent += 1
            text = f"Client {index}, request {sent}: describe a cat."
            content = text if sent % 4 else [{"type": "image_url", "image_url": {"url": pictures[sent % 3]}},
                                             {"type": "text", "text": text}]
            body = {
                "model": "qwen3-vl", "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0.7, "seed": sent,
                "messages": [{"role": "user", "content": content}],
            }
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    pass
                run.statuses[response.status_code] = run.statuses.get(response.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await asyncio.gather(*(client(i, http) for i in range(CONCURRENCY)))


def _watch_peaks(prometheus: PrometheusServer, run: LoadRun, stop: threading.Event) -> None:
    """Peaks of the fast signals while the load runs (a gauge can drop between two end-of-load reads)."""
    watched = ("triton:pending_requests", "triton:queue_time_per_request_seconds:avg1m", "qwen3vl:batch_size:avg1m")
    while not stop.wait(1):
        for expr in watched:
            for sample in prometheus.query(f'{expr}{{namespace="{LOCAL_NAMESPACE}"}}'):
                run.peaks[expr] = max(run.peaks.get(expr, 0.0), float(sample["value"][1]))


@pytest.fixture(scope="module")
def stack(triton) -> Stack:
    log_dir = Path(tempfile.mkdtemp(prefix="monitoring-live-"))
    dcgm = DcgmExporterDouble([GpuAssignment(LOCAL_NAMESPACE, "triton-0")]).start()
    frontend = FrontendServer(port=free_port(), env={"FRONTEND_TRITON_GRPC_URL": triton.grpc_url},
                              log_file=str(log_dir / "frontend.log")).start()
    triton_address = f"127.0.0.1:{triton.metrics_port}"
    frontend_address = frontend.url.removeprefix("http://")
    config = local_config(LocalTargets(triton=[triton_address], frontend=[frontend_address],
                                       dcgm_exporter=[dcgm.address]), scrape_interval="1s", evaluation_interval="1s")
    prometheus = PrometheusServer(port=free_port(), config=config, log_file=str(log_dir / "prometheus.log")).start()
    try:
        prometheus.wait_for_targets(["triton", "frontend", "dcgm-exporter"], timeout=60)
        time.sleep(6)  # a few idle samples before the load, so rate() windows start from a baseline
        run = LoadRun(started=time.time())
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_peaks, args=(prometheus, run, stop), daemon=True)
        watcher.start()
        asyncio.run(_drive_load(frontend.url, run))
        time.sleep(6)  # let the last scrapes and one rule evaluation (every 5s) land
        run.ended = time.time()
        stop.set()
        watcher.join(timeout=10)
        yield Stack(prometheus=prometheus, load=run)
    finally:
        prometheus.stop()
        frontend.stop()
        dcgm.stop()


def _values(samples: list[dict]) -> list[float]:
    return [float(s["value"][1]) for s in samples]


def _recording_rules() -> list[str]:
    names = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names += [r["record"] for r in group["rules"] if "record" in r]
    return names


def _alerts() -> list[dict]:
    alerts = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            alerts += [r for r in group["rules"] if "alert" in r]
    return alerts


def _kubernetes_only(expr: str) -> bool:
    return any(prefix in expr for prefix in KUBERNETES_ONLY)


def _substitute(expr: str) -> str:
    """What Grafana sends for namespace=local, all pods, and a 30s rate interval."""
    return (expr.replace("$namespace", LOCAL_NAMESPACE).replace("${namespace}", LOCAL_NAMESPACE)
            .replace("$pod", ".*").replace("${pod}", ".*").replace("$__rate_interval", "30s"))


def test_the_load_was_served(stack):
    assert stack.load.statuses.get(200, 0) >= 2 * CONCURRENCY, stack.load.statuses
    assert set(stack.load.statuses) == {200}, f"some requests failed: {stack.load.statuses}"


def test_every_recording_rule_returns_plausible_values_under_load(stack):
    results = {name: stack.at_end_of_load(f'{name}{{namespace="{LOCAL_NAMESPACE}"}}') for name in _recording_rules()}
    empty = [name for name, samples in results.items() if not samples]
    assert not empty, f"no data under load: {empty}"
    for name, samples in results.items():
        assert all(math.isfinite(v) and v >= 0 for v in _values(samples)), (name, samples)

    def one(name: str, **labels: str) -> float:
        matching = [s for s in results[name] if all(s["metric"].get(k) == v for k, v in labels.items())]
        assert len(matching) == 1, (name, labels, results[name])
        return float(matching[0]["value"][1])

    pod = {"pod": "triton-0"}
    assert one("triton:requests:rate1m", **pod) > 0.1
    assert one("qwen3vl:generated_tokens:rate1m", **pod) > 1
    assert 0 <= one("triton:gpu_utilization:avg", **pod) <= 100
    assert one("triton:queue_to_compute_ratio:avg1m", **pod) > 0
    assert one("triton:queue_time_per_request_seconds:avg1m", **pod) > 0
    # One pod: the namespace figures are that pod's.
    assert one("triton:queue_time_per_request_seconds:avg1m:namespace") == one(
        "triton:queue_time_per_request_seconds:avg1m", **pod)
    assert one("triton:pending_requests:namespace") == one("triton:pending_requests", **pod)
    assert one("triton:gpu_utilization:avg:namespace") == one("triton:gpu_utilization:avg", **pod)
    # Frontend: the chat route served requests; nothing failed; a first token within a minute.
    assert one("frontend:requests:rate1m", route="/v1/chat/completions", status="200") > 0.1
    assert sum(_values(results["frontend:error_ratio:rate5m"])) == 0
    assert {s["metric"]["kind"] for s in results["frontend:error_ratio:rate5m"]} >= {"overloaded", "unavailable"}
    assert 0 < one("frontend:time_to_first_token_seconds:p95_5m") < 60


def test_requests_queue_and_batch_under_concurrency(stack):
    peaks = stack.load.peaks
    assert peaks.get("triton:pending_requests", 0) >= 1, peaks
    assert peaks.get("triton:queue_time_per_request_seconds:avg1m", 0) > 0, peaks
    assert peaks.get("qwen3vl:batch_size:avg1m", 0) > 1, peaks
    (batch,) = _values(stack.at_end_of_load(f'qwen3vl:batch_size:avg1m{{namespace="{LOCAL_NAMESPACE}"}}'))
    assert batch > 1, "the engine decoded one sequence at a time under concurrency"


def test_every_rule_evaluates_without_error(stack):
    groups = stack.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = {rule["name"] for rule in rules}
    assert set(_recording_rules()) <= names and {a["alert"] for a in _alerts()} <= names
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken


def _alert_signal(expr: str) -> str:
    """The measured side of an alert: the left operand of its first comparison, or what absent() watches.
    In a compound alert ("(a > x and b > y) or ...") that operand comes after an opening parenthesis."""
    absent = re.fullmatch(r"\s*absent\((.+)\)\s*", expr, flags=re.DOTALL)
    if absent:
        return absent.group(1)
    left = re.split(r"\s(?:>=|<=|==|!=|>|<)\s", expr, maxsplit=1)[0]
    return left.strip().removeprefix("(").strip() if left.count("(") > left.count(")") else left


def test_every_alert_expression_parses_and_its_signal_has_data(stack):
    for alert in _alerts():
        name, expr = alert["alert"], alert["expr"]
        firing_now = stack.at_end_of_load(expr)  # raises on a parse error
        signal = _alert_signal(expr)
        samples = stack.at_end_of_load(signal)
        if _kubernetes_only(signal):
            assert samples == [] and firing_now == [], name
            continue
        assert samples, f"{name}: {signal!r} has no data"
        if name == "ScalerMetricMissing":
            assert firing_now == [], f"{name} would fire on a healthy stack"
        elif name == "TritonDown":
            assert _values(samples) == [1.0] and firing_now == []
        elif name == "GPUMemoryNearlyFull":
            assert all(0 < v < 1 for v in _values(samples))
        elif name == "TritonQueueTimeAboveObjective":
            assert all(v >= 0 for v in _values(samples))
        elif name == "FrontendErrorRatioHigh":
            assert _values(samples) == [0.0] and firing_now == []
        elif name == "TimeToFirstTokenBudgetBurn":
            # A share, and the alert firing exactly when its windows' burn rates say so. Whether they do
            # depends on the machine: 16 streams on 8 sequences put first tokens near the 2 s objective
            # on a 2-core CPU (one machine saw 1.8 % over it, one nearly twice as slow 26-96 %).
            assert all(0 <= v <= 1 for v in _values(samples)), samples
            assert bool(firing_now) == _burning(stack, expr), (name, expr, samples)


def _burning(stack: Stack, expr: str) -> bool:
    """Whether a multiwindow burn-rate alert's ``(A > k * b and B > k * b) or (...)`` holds, window by window."""
    for group in re.split(r"\)\s*or\s*\(", expr):
        windows = re.findall(r"([\w:]+) > \(([\d.]+) \* ([\d.]+)\)", group)
        assert windows, group
        if all(any(v > float(k) * float(b) for v in _values(stack.at_end_of_load(rule))) for rule, k, b in windows):
            return True
    return False


def test_every_dashboard_panel_query_returns_data(stack):
    """Every query is checked, and every one without plausible data is named."""
    checked, wrong = 0, []
    for make in DASHBOARDS.values():
        dashboard = json.loads(render(make()))
        panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
        for panel in panels:
            for target in panel.get("targets", []):
                expr = _substitute(target["expr"])
                assert "$" not in expr, f"{panel['title']}: unsubstituted variable in {expr}"
                samples = stack.at_end_of_load(expr)
                checked += 1
                if _kubernetes_only(expr):
                    continue
                values = _values(samples)
                if not samples or not all(math.isfinite(v) and v >= 0 for v in values):
                    wrong.append(f"{panel['title']} / {target['legendFormat']}: {expr} -> {values}")
    assert checked >= 30
    assert not wrong, "\n".join(wrong)


def test_dashboard_variables_resolve_to_the_local_stack(stack):
    """`label_values(up{job="triton"}, namespace)` and the pod variable's query, as Grafana runs them."""
    namespaces = stack.prometheus.api("label/namespace/values", **{"match[]": 'up{job="triton"}'})
    assert namespaces == [LOCAL_NAMESPACE]
    pods = stack.prometheus.api("label/pod/values", **{"match[]": f'up{{job="triton", namespace="{LOCAL_NAMESPACE}"}}'})
    assert pods == ["triton-0"]


def _scaledobject_queries() -> list[str]:
    queries = []
    for path in sorted((REPO / "k8s").rglob("scaledobject*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "ScaledObject":
                queries += [t["metadata"]["query"] for t in document["spec"]["triggers"] if t["type"] == "prometheus"]
    return queries


def test_every_autoscaler_query_returns_a_plausible_value(stack):
    queries = _scaledobject_queries()
    assert len(queries) >= 3, "expected the ScaledObject's three Prometheus triggers under k8s/"
    for query in queries:
        local = re.sub(r'namespace="[^"]*"', f'namespace="{LOCAL_NAMESPACE}"', query)
        values = _values(stack.at_end_of_load(local))
        assert len(values) == 1, f"KEDA needs exactly one value from {local}: {values}"
        assert math.isfinite(values[0]) and values[0] >= 0
        if "gpu_utilization" in query:
            assert values[0] <= 100


def test_queue_time_and_pending_fall_back_when_idle(stack):
    """After the load the 1m windows empty out: queue time and pending go back to zero, batch size goes away."""
    queue = f'triton:queue_time_per_request_seconds:avg1m:namespace{{namespace="{LOCAL_NAMESPACE}"}}'
    pending = f'triton:pending_requests:namespace{{namespace="{LOCAL_NAMESPACE}"}}'
    batch = f'qwen3vl:batch_size:avg1m{{namespace="{LOCAL_NAMESPACE}"}}'

    def idle() -> tuple[list[float], list[float], list[float]]:
        return (_values(stack.prometheus.query(queue)), _values(stack.prometheus.query(pending)),
                _values(stack.prometheus.query(batch)))

    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and idle() != ([0.0], [0.0], []):
        time.sleep(2)
    # Zero, not absent: KEDA and the per-namespace mean keep a number to work with. Idle means
    # no decode step, so no batch size rather than a misleading zero.
    assert idle() == ([0.0], [0.0], [])
    assert stack.load.peaks["triton:queue_time_per_request_seconds:avg1m"] > 0
