"""What KEDA and the HPA would decide with each overlay's ScaledObject, from the real Prometheus scraping real Tritons.

Two Triton processes stand for the two warm replicas (minReplicaCount), each running at most two
sequences so that a queue builds on this small machine. The real Prometheus scrapes them every second
with the platform's recording rules, beside the dcgm-exporter test double (no GPU here), which reads
100 % utilization throughout: a GPU runs kernels as soon as one sequence decodes. The ScaledObjects are
read from the built `gpu` and `gpu-shared` overlays exactly as the planner reads them; each trigger's
own query is evaluated with its namespace matcher pointed at the local stack, and planner.keda /
planner.hpa turn the values into replicas.

What is applied is the HPA's instantaneous recommendation: one proposal per trigger (Value: ratio times
the ready pods; AverageValue: the total over the target), the tolerance, the highest proposal, a failed
metric holding scale-down, then minReplicaCount / maxReplicaCount; KEDA's fallback after
failureThreshold failed polls. The stabilization windows and rate policies are time-based; the
planner's simulator plays them out (tests/unit/planner). The deployment is taken to be at
minReplicaCount throughout, the state in which a load arrives.
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from clients.triton_stream import build_inputs, stream, user_turn
from planner.keda import KedaAutoscaler
from planner.scaledobject import ScaledObjectSpec, Trigger, load_scaled_object
from stack.ports import free_port
from stack.prometheus import LOCAL_NAMESPACE, LocalTargets, PrometheusError, PrometheusServer, local_config
from tests.doubles.dcgm_exporter import DcgmExporterDouble, GpuAssignment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[3]
OVERLAYS = ("gpu", "gpu-shared")
REPLICAS = 2
SEQUENCES = 2  # per Triton: a few clients fill it
BUSY_CLIENTS = 1  # per Triton: a sequence decodes, nothing waits
OVERLOAD_CLIENTS = 12  # per Triton: six times its sequences, the rest wait (max_queue_size 32)
BUSY_SECONDS = 20
LOAD_SECONDS = 45  # longer than the 30 s the GPU rule wants the queue to stay non-empty
MAX_TOKENS = 128  # an answer long enough that the requests queued behind it wait well past the target
IDLE_WAIT_SECONDS = 60
RETURN_WAIT_SECONDS = 150  # the queue-time rule averages over 1m: it empties a minute after the last request


@dataclass(frozen=True)
class Decision:
    values: dict[str, float]
    proposals: dict[str, int | None]
    desired: int

    def __str__(self) -> str:
        triggers = ", ".join(f"{name}={self.values.get(name, math.nan):.3g}->{self.proposals[name]}"
                             for name in self.proposals)
        return f"desired={self.desired} ({triggers})"


def local_query(trigger: Trigger) -> str:
    """The trigger's query with its namespace matcher pointed at the local stack's label."""
    local, count = re.subn(r'namespace="[^"]*"', f'namespace="{LOCAL_NAMESPACE}"', trigger.query)
    assert count == 1, f"{trigger.name}: expected one namespace matcher in {trigger.query!r}"
    return local


class PrometheusView:
    """planner.keda's ClusterView backed by a live Prometheus, the workload at `replicas`."""

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


def decide(prometheus: PrometheusServer, so: ScaledObjectSpec, keda: KedaAutoscaler | None = None) -> Decision:
    """One poll: `keda` carries the failure counts from poll to poll (the fallback needs several)."""
    keda = keda or KedaAutoscaler(so)
    view = PrometheusView(prometheus, so, so.min_replica_count)
    proposals = dict(zip([t.name for t in so.triggers], keda.proposals(view), strict=True))
    raw = {t.name: view.query(t.signal) for t in so.triggers}
    valid = [p for p in proposals.values() if p is not None]
    desired = max(valid, default=view.spec_replicas())
    if len(valid) < len(proposals):  # the HPA does not scale down on a partial view
        desired = max(desired, view.spec_replicas())
    desired = min(max(desired, keda.hpa.min_replicas), keda.hpa.max_replicas)
    return Decision({k: v for k, v in raw.items() if v is not None}, proposals, desired)


def decide_all(prometheus: PrometheusServer, scaled: dict[str, ScaledObjectSpec]) -> dict[str, Decision]:
    return {name: decide(prometheus, so) for name, so in scaled.items()}


def drive_load(grpc_urls: list[str], clients_per_url: int, seconds: float) -> dict[str, int]:
    """Clients streaming requests back to back for `seconds`, an equal number on each Triton."""
    deadline = time.monotonic() + seconds
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def client(index: int) -> None:
        url = grpc_urls[index % len(grpc_urls)]
        while time.monotonic() < deadline:
            result = stream(url, build_inputs(user_turn(f"Client {index}: describe a cat."),
                                              max_tokens=MAX_TOKENS, ignore_eos=True), timeout=90)
            with lock:
                counts["failed" if result.error else "ok"] += 1

    with ThreadPoolExecutor(max_workers=clients_per_url * len(grpc_urls)) as pool:
        list(pool.map(client, range(clients_per_url * len(grpc_urls))))
    return counts


def while_loaded(prometheus: PrometheusServer, scaled: dict[str, ScaledObjectSpec], load: Callable[[], dict],
                 ) -> tuple[list[dict[str, Decision]], dict[str, int]]:
    """Every decision taken while `load` runs (one round every 2 s)."""
    counts: dict[str, int] = {}
    loader = threading.Thread(target=lambda: counts.update(load()), daemon=True)
    loader.start()
    rounds = []
    while loader.is_alive():
        loader.join(timeout=2)
        rounds.append(decide_all(prometheus, scaled))
    return rounds, counts


def wait_for(prometheus: PrometheusServer, scaled: dict[str, ScaledObjectSpec],
             done: Callable[[dict[str, Decision]], bool], timeout: float) -> tuple[dict[str, Decision], float]:
    started = time.monotonic()
    decisions = decide_all(prometheus, scaled)
    while not done(decisions) and time.monotonic() - started < timeout:
        time.sleep(2)
        decisions = decide_all(prometheus, scaled)
    return decisions, time.monotonic() - started


def trigger(so: ScaledObjectSpec, signal: str) -> Trigger:
    (found,) = [t for t in so.triggers if t.signal == signal]
    return found


@dataclass
class Run:
    scaled: dict[str, ScaledObjectSpec]
    idle: dict[str, Decision]
    busy: list[dict[str, Decision]]
    busy_requests: dict[str, int]
    overload: list[dict[str, Decision]]
    overload_requests: dict[str, int]
    after: dict[str, Decision]
    returned_after_seconds: float
    gpu_utilization_read: list[float]
    no_rules: dict[str, list[Decision]]
    no_rules_ignoring_nulls: dict[str, Decision]


def _report(label: str, decisions: dict[str, Decision]) -> None:
    for name, decision in decisions.items():
        print(f"{label:<12}{name:<11}{decision}")


def _peak(rounds: list[dict[str, Decision]], name: str) -> Decision:
    return max((r[name] for r in rounds), key=lambda d: (d.desired, *(p or 0 for p in d.proposals.values())))


@pytest.fixture(scope="module")
def run(start_triton) -> Iterator[Run]:
    scaled = {name: load_scaled_object(REPO / "k8s" / "overlays" / name) for name in OVERLAYS}
    assert {so.min_replica_count for so in scaled.values()} == {REPLICAS}
    log_dir = Path(tempfile.mkdtemp(prefix="scaling-decision-"))
    tritons, prometheus, bare = [], None, None
    dcgm = DcgmExporterDouble([GpuAssignment(LOCAL_NAMESPACE, f"triton-{i}") for i in range(REPLICAS)],
                              utilization=100).start()
    try:
        tritons = [start_triton(parameters={"max_num_seqs": str(SEQUENCES)}) for _ in range(REPLICAS)]
        targets = LocalTargets(triton=[f"127.0.0.1:{t.metrics_port}" for t in tritons], frontend=[],
                               dcgm_exporter=[dcgm.address])
        config = local_config(targets, scrape_interval="1s", evaluation_interval="1s")
        prometheus = PrometheusServer(port=free_port(), config=config, log_file=str(log_dir / "prometheus.log")).start()
        prometheus.wait_for_targets(["triton", "dcgm-exporter"], timeout=60)
        urls = [t.grpc_url for t in tritons]

        idle, _ = wait_for(prometheus, scaled, lambda ds: all(
            len(d.values) == len(scaled[n].triggers) and not any(math.isnan(v) for v in d.values.values())
            for n, d in ds.items()), IDLE_WAIT_SECONDS)
        _report("idle", idle)

        busy, busy_requests = while_loaded(prometheus, scaled, lambda: drive_load(urls, BUSY_CLIENTS, BUSY_SECONDS))
        gpu = [float(s["value"][1]) for s in prometheus.query(f'triton:gpu_utilization:avg{{namespace="{LOCAL_NAMESPACE}"}}')]
        _report("busy peak", {n: _peak(busy, n) for n in scaled})

        overload, overload_requests = while_loaded(
            prometheus, scaled, lambda: drive_load(urls, OVERLOAD_CLIENTS, LOAD_SECONDS))
        _report("overload", {n: _peak(overload, n) for n in scaled})
        print(f"requests: busy {busy_requests}, overload {overload_requests}")

        after, returned = wait_for(prometheus, scaled, lambda ds: all(
            d.desired == scaled[n].min_replica_count for n, d in ds.items()), RETURN_WAIT_SECONDS)
        _report(f"after {returned:.0f} s", after)

        # The recording rules not loaded: every query comes back empty from a Prometheus that scrapes
        # the same targets. KEDA polls with one autoscaler per ScaledObject, so failures add up.
        bare_config = {key: value for key, value in config.items() if key != "rule_files"}
        bare = PrometheusServer(port=free_port(), config=bare_config, log_file=str(log_dir / "bare.log")).start()
        bare.wait_for_targets(["triton"], timeout=60)
        no_rules = {}
        for name, so in scaled.items():
            keda = KedaAutoscaler(so)
            no_rules[name] = [decide(bare, so, keda) for _ in range(so.fallback.failure_threshold + 1)]
            _report("no rules", {name: no_rules[name][-1]})
        ignoring = {name: decide(bare, replace(so, triggers=tuple(replace(t, ignore_null_values=True)
                                                                  for t in so.triggers)))
                    for name, so in scaled.items()}
        yield Run(scaled, idle, busy, busy_requests, overload, overload_requests, after, returned, gpu,
                  no_rules, ignoring)
    finally:
        for server in (bare, prometheus, *tritons):
            if server is not None:
                server.stop()
        dcgm.stop()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_idle_every_trigger_has_a_value_and_the_decision_is_the_minimum(run, overlay):
    so, idle = run.scaled[overlay], run.idle[overlay]
    assert set(idle.values) == {t.name for t in so.triggers}, idle
    assert all(math.isfinite(v) and v >= 0 for v in idle.values.values()), idle
    assert idle.values[trigger(so, "waiting").name] == 0, idle
    assert idle.values[trigger(so, "occupancy").name] == 0, idle
    assert idle.desired == so.min_replica_count, idle


def test_busy_gpus_without_a_queue_do_not_grow_the_count(run):
    """DCGM reads 100 % on both pods while each decodes a sequence and nothing waits."""
    assert run.busy_requests.get("ok", 0) >= REPLICAS and run.busy_requests.get("failed", 0) == 0, run.busy_requests
    assert run.gpu_utilization_read == [100.0] * REPLICAS
    so = run.scaled["gpu"]
    occupancy, gpu = trigger(so, "occupancy"), trigger(so, "gpu_utilization_while_waiting")
    assert max(r["gpu"].values[occupancy.name] for r in run.busy) > 0, "sequences should have been running"
    assert all(r["gpu"].values[gpu.name] == 0 for r in run.busy), [str(r["gpu"]) for r in run.busy]
    for overlay in OVERLAYS:
        assert all(r[overlay].desired == run.scaled[overlay].min_replica_count for r in run.busy), \
            [str(r[overlay]) for r in run.busy]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overload_asks_for_more_replicas_on_every_signal(run, overlay):
    assert run.overload_requests.get("ok", 0) >= REPLICAS * OVERLOAD_CLIENTS, run.overload_requests
    assert run.overload_requests.get("failed", 0) == 0, run.overload_requests
    so = run.scaled[overlay]
    peak = _peak(run.overload, overlay)
    for t in so.triggers:
        best = max((r[overlay] for r in run.overload), key=lambda d: d.proposals[t.name] or 0)
        # Value: compared as is; AverageValue: shared by the pods the deployment has.
        per_pod = best.values[t.name] / (1 if t.metric_type == "Value" else so.min_replica_count)
        assert per_pod > t.threshold, (t.name, str(best))
        assert best.proposals[t.name] > so.min_replica_count, (t.name, str(best))
    assert so.min_replica_count < peak.desired <= so.max_replica_count, peak


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_after_the_load_the_decision_returns_to_the_minimum(run, overlay):
    so, after = run.scaled[overlay], run.after[overlay]
    assert after.values[trigger(so, "waiting").name] == 0, after
    assert after.values[trigger(so, "queue_time").name] <= trigger(so, "queue_time").threshold, after
    assert after.desired == so.min_replica_count, (str(after), f"{run.returned_after_seconds:.0f} s")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_empty_query_engages_the_fallback_instead_of_reading_zero(run, overlay):
    so, polls = run.scaled[overlay], run.no_rules[overlay]
    assert all(not d.values or all(math.isnan(v) for v in d.values.values()) for d in polls), polls
    # Up to failureThreshold polls the HPA holds what it has; then KEDA reports fallback.replicas.
    assert [d.desired for d in polls[:-1]] == [so.min_replica_count] * so.fallback.failure_threshold
    assert polls[-1].desired == so.fallback.replicas > so.min_replica_count, polls[-1]
    # With ignoreNullValues "true" (KEDA's default) the same empty results read as an idle fleet.
    assert run.no_rules_ignoring_nulls[overlay].desired == so.min_replica_count
