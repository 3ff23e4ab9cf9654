"""The ScaledObject's scaling decision, computed from the real Prometheus scraping the real Triton.

A dedicated Triton with two engine slots (so that a queue builds on this small
machine) is scraped every second by the real Prometheus with the platform's
recording rules, beside the dcgm-exporter test double (no GPU here). The
ScaledObject is read from the built GPU overlay exactly as the planner reads
it; each trigger's own query is evaluated with the namespace matcher pointed at
the local stack, and planner.keda / planner.hpa turn the values into replicas.

What is applied is the HPA's instantaneous recommendation: one proposal per
trigger (Value: ratio times the ready pods; AverageValue: the total over the
target), the tolerance, the highest proposal, then minReplicaCount /
maxReplicaCount. The stabilization windows and rate policies are time-based;
the planner's simulator plays them out (tests/unit/planner), they are not
re-run here. KEDA's activation step does not apply: minReplicaCount > 0 keeps
the workload out of zero. The deployment is taken to be at minReplicaCount
throughout, the state in which a load arrives.
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.triton_stream import build_inputs, stream, user_turn
from planner.keda import KedaAutoscaler
from planner.scaledobject import ScaledObjectSpec, Trigger, load_scaled_object
from stack.ports import free_port
from stack.prometheus import LOCAL_NAMESPACE, LocalTargets, PrometheusError, PrometheusServer, local_config
from tests.doubles.dcgm_exporter import DcgmExporterDouble, GpuAssignment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
OVERLAY = REPO / "k8s" / "overlays" / "gpu"
SLOTS = 2
CLIENTS = 24  # twelve times the slots: requests wait in Triton's queue (max_queue_size 32)
LOAD_SECONDS = 30
MAX_REQUESTS = 600
MAX_TOKENS = 32
IDLE_WAIT_SECONDS = 60
RETURN_WAIT_SECONDS = 120  # the queue-time rule averages over 1m: it empties a minute after the last request


@dataclass(frozen=True)
class Decision:
    values: dict[str, float]
    proposals: dict[str, int | None]
    desired: int

    def __str__(self) -> str:
        triggers = ", ".join(f"{name}={self.values.get(name, float('nan')):.3g}->{self.proposals[name]}"
                             for name in self.proposals)
        return f"desired={self.desired} ({triggers})"


def local_query(trigger: Trigger) -> str:
    """The trigger's query with its namespace matcher pointed at the local stack's label."""
    local, count = re.subn(r'namespace="[^"]*"', f'namespace="{LOCAL_NAMESPACE}"', trigger.query)
    assert count == 1, f"{trigger.name}: expected one namespace matcher in {trigger.query!r}"
    return local


class PrometheusView:
    """planner.keda's ClusterView backed by the live Prometheus, the workload at `replicas`."""

    def __init__(self, prometheus: PrometheusServer, so: ScaledObjectSpec, replicas: int) -> None:
        self.prometheus = prometheus
        self.replicas = replicas
        self.queries = {t.signal: local_query(t) for t in so.triggers}
        self._answers: dict[str, float | None] = {}

    def spec_replicas(self) -> int:
        return self.replicas

    def status_replicas(self) -> int:
        return self.replicas

    def ready_replicas(self) -> int:
        return self.replicas

    def query(self, signal: str) -> float | None:
        """Each query runs once per view, so the decision and the values it reports agree."""
        if signal not in self._answers:
            self._answers[signal] = self._ask(signal)
        return self._answers[signal]

    def _ask(self, signal: str) -> float | None:
        try:
            samples = self.prometheus.query(self.queries[signal])
        except PrometheusError:
            return None
        if not samples:
            return math.nan
        # KEDA's Prometheus scaler refuses a query that returns more than one element.
        assert len(samples) == 1, f"{self.queries[signal]} returned {len(samples)} series: {samples}"
        return float(samples[0]["value"][1])

    def cpu_utilization(self) -> tuple[list[float], int, int]:
        raise AssertionError("the ScaledObject has no cpu trigger")


def decide(prometheus: PrometheusServer, so: ScaledObjectSpec) -> Decision:
    keda = KedaAutoscaler(so)
    view = PrometheusView(prometheus, so, so.min_replica_count)
    raw = {t.name: view.query(t.signal) for t in so.triggers}
    proposals = dict(zip([t.name for t in so.triggers], keda.proposals(view), strict=True))
    valid = [p for p in proposals.values() if p is not None]
    desired = min(max(max(valid, default=view.spec_replicas()), keda.hpa.min_replicas), keda.hpa.max_replicas)
    return Decision({k: v for k, v in raw.items() if v is not None}, proposals, desired)


def drive_load(grpc_url: str) -> dict[str, int]:
    """CLIENTS streaming requests back to back until LOAD_SECONDS pass (at most MAX_REQUESTS)."""
    deadline = time.monotonic() + LOAD_SECONDS
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def client(index: int) -> None:
        while time.monotonic() < deadline:
            with lock:
                if counts["ok"] + counts["failed"] >= MAX_REQUESTS:
                    return
            result = stream(grpc_url, build_inputs(user_turn(f"Client {index}: describe a cat."),
                                                   max_tokens=MAX_TOKENS, ignore_eos=True), timeout=90)
            with lock:
                counts["failed" if result.error else "ok"] += 1

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    return counts


@dataclass
class Run:
    so: ScaledObjectSpec
    idle: Decision
    peak: Decision
    after: Decision
    requests: dict[str, int]
    returned_after_seconds: float


def _wait_for(prometheus: PrometheusServer, so: ScaledObjectSpec, done, timeout: float) -> Decision:
    deadline = time.monotonic() + timeout
    decision = decide(prometheus, so)
    while not done(decision) and time.monotonic() < deadline:
        time.sleep(2)
        decision = decide(prometheus, so)
    return decision


@pytest.fixture(scope="module")
def run(start_triton) -> Iterator[Run]:
    so = load_scaled_object(OVERLAY)
    log_dir = Path(tempfile.mkdtemp(prefix="scaling-decision-"))
    triton = start_triton(parameters={"slots": str(SLOTS)})
    dcgm = DcgmExporterDouble([GpuAssignment(LOCAL_NAMESPACE, "triton-0")]).start()
    config = local_config(LocalTargets(triton=[f"127.0.0.1:{triton.metrics_port}"], frontend=[],
                                       dcgm_exporter=[dcgm.address]), scrape_interval="1s", evaluation_interval="1s")
    prometheus = PrometheusServer(port=free_port(), config=config, log_file=str(log_dir / "prometheus.log")).start()
    try:
        prometheus.wait_for_targets(["triton", "dcgm-exporter"], timeout=60)
        # The GPU trigger reads the double's utilization, a synthetic 15-95 % curve that ignores the
        # load; above target x (1 + tolerance) it asks for one more pod for ~10 s of every ~94 s.
        # Idle is taken at a moment it does not, once every trigger has a value.
        idle = _wait_for(prometheus, so, lambda d: len(d.values) == len(so.triggers)
                         and not any(math.isnan(v) for v in d.values.values())
                         and d.desired == so.min_replica_count, IDLE_WAIT_SECONDS)
        print(f"\nidle:       {idle}")

        counts: dict[str, int] = {}
        loader = threading.Thread(target=lambda: counts.update(drive_load(triton.grpc_url)), daemon=True)
        loader.start()
        measured = [t.name for t in so.triggers if t.signal != "gpu_utilization"]

        def weight(d: Decision) -> tuple:
            return (d.desired, *(min(d.proposals[name] or 0, so.max_replica_count) for name in measured))

        peak = decide(prometheus, so)
        while loader.is_alive():
            loader.join(timeout=2)
            peak = max(peak, decide(prometheus, so), key=weight)
        print(f"under load: {peak}  requests={counts}")

        stopped = time.monotonic()
        after = _wait_for(prometheus, so, lambda d: d.desired == so.min_replica_count
                          and all(v <= t.threshold for t in so.triggers if t.signal != "gpu_utilization"
                                  for v in [d.values.get(t.name, math.inf)]), RETURN_WAIT_SECONDS)
        returned = time.monotonic() - stopped
        print(f"after:      {after}  ({returned:.0f} s after the load)")
        yield Run(so, idle, peak, after, counts, returned)
    finally:
        prometheus.stop()
        dcgm.stop()
        triton.stop()


def _trigger(so: ScaledObjectSpec, signal: str) -> Trigger:
    (trigger,) = [t for t in so.triggers if t.signal == signal]
    return trigger


def test_the_scaledobject_scales_triton_between_min_and_max_on_prometheus_triggers(run):
    so = run.so
    assert so.target == "triton"
    assert 1 <= so.min_replica_count < so.max_replica_count
    assert {t.signal for t in so.triggers} == {"queue_time", "pending", "gpu_utilization"}


def test_idle_every_trigger_has_a_value_and_the_decision_is_the_minimum(run):
    assert set(run.idle.values) == {t.name for t in run.so.triggers}, run.idle
    assert all(math.isfinite(v) and v >= 0 for v in run.idle.values.values()), run.idle
    assert run.idle.values[_trigger(run.so, "queue_time").name] == 0, run.idle
    assert run.idle.values[_trigger(run.so, "pending").name] == 0, run.idle
    assert run.idle.desired == run.so.min_replica_count, run.idle


def test_under_load_queue_time_and_pending_exceed_their_targets_and_replicas_rise(run):
    assert run.requests.get("ok", 0) >= CLIENTS and run.requests.get("failed", 0) == 0, run.requests
    queue, pending = _trigger(run.so, "queue_time"), _trigger(run.so, "pending")
    # Value: compared as is; AverageValue: shared by the pods the deployment has.
    assert run.peak.values[queue.name] > queue.threshold, run.peak
    assert run.peak.values[pending.name] / run.so.min_replica_count > pending.threshold, run.peak
    assert run.peak.proposals[queue.name] > run.so.min_replica_count, run.peak
    assert run.peak.proposals[pending.name] > run.so.min_replica_count, run.peak
    assert run.so.min_replica_count < run.peak.desired <= run.so.max_replica_count, run.peak


def test_after_the_load_the_decision_returns_to_the_minimum(run):
    queue, pending = _trigger(run.so, "queue_time"), _trigger(run.so, "pending")
    assert run.after.values[pending.name] == 0, run.after
    assert run.after.values[queue.name] <= queue.threshold, run.after
    assert run.after.desired == run.so.min_replica_count, (run.after, f"{run.returned_after_seconds:.0f} s")
