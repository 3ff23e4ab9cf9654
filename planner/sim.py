"""Event-driven simulation of a Triton Deployment under a traffic trace and a scaling policy.

Each request goes to the least occupied ready pod, as the frontend routes (frontend/routing.py:
its own streams on each pod over the pod's max_num_seqs, ties at random); the control plane
runs on its own clocks: Prometheus scrapes and rule evaluations, KEDA's pollingInterval, the
HPA's 15 s sync, pod start-up and readiness.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from planner.hpa import SYNC_PERIOD_SECONDS
from planner.keda import KedaAutoscaler
from planner.pod import DRAINING, GONE, NO_ENDPOINT, READY, STARTING, Pod, Requests
from planner.profile import PodProfile
from planner.prometheus import Prometheus
from planner.scaledobject import ScaledObjectSpec
from planner.traffic import Trace


@dataclass(frozen=True)
class SimConfig:
    scrape_interval: float = 15.0
    eval_interval: float = 15.0
    rate_window: float = 60.0
    hpa_sync_period: float = SYNC_PERIOD_SECONDS
    readiness_period: float = 5.0
    termination_grace_seconds: float = 300.0
    record_interval: float = 15.0
    prometheus_outages: tuple[tuple[float, float], ...] = ()
    drain_after_end: float = 1800.0


@dataclass(frozen=True)
class Policy:
    """Either a fixed number of pods, or a ScaledObject (KEDA + the HPA it creates)."""

    name: str
    static_replicas: int | None = None
    scaled_object: ScaledObjectSpec | None = None
    initial_replicas: int | None = None

    def __post_init__(self) -> None:
        if (self.static_replicas is None) == (self.scaled_object is None):
            raise ValueError("a policy is either static_replicas or a scaled_object")
        if self.static_replicas is not None and self.static_replicas < 0:
            raise ValueError("static_replicas must be >= 0")

    def start_replicas(self) -> int:
        if self.static_replicas is not None:
            return self.static_replicas
        assert self.scaled_object is not None
        so = self.scaled_object
        if self.initial_replicas is not None:
            return min(max(self.initial_replicas, so.min_replica_count), so.max_replica_count)
        return max(so.min_replica_count, 1)


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    pods: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    queue_time: list[float] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)
    gpu_utilization: list[float] = field(default_factory=list)


@dataclass
class SimResult:
    policy: str
    trace: Trace
    profile: PodProfile
    arrival: np.ndarray
    ttft: np.ndarray
    latency: np.ndarray
    queue_time: np.ndarray
    status: np.ndarray
    pod_spans: list[tuple[float, float]]
    timeline: Timeline

    def gpu_hours(self) -> float:
        end = self.trace.duration
        seconds = sum(max(min(e, end) - s, 0.0) for s, e in self.pod_spans)
        return seconds * self.profile.gpus_per_pod / 3600.0


class _View:
    """ClusterView for the autoscalers."""

    def __init__(self, sim: Simulation, now: float):
        self.sim = sim
        self.now = now

    def spec_replicas(self) -> int:
        return self.sim.desired

    def status_replicas(self) -> int:
        return sum(1 for p in self.sim.pods if p.state in (STARTING, READY))

    def ready_replicas(self) -> int:
        return len(self.sim.ready)

    def query(self, signal: str) -> float | None:
        return self.sim.prom.query(signal, self.now)

    def cpu_utilization(self) -> tuple[list[float], int, int]:
        values, missing, unready = [], 0, 0
        for p in self.sim.pods:
            if p.state == STARTING:
                unready += 1
            elif p.state == READY:
                v = self.sim.cpu_util.get(p.id)
                if v is None:
                    missing += 1
                else:
                    values.append(v)
        return values, missing, unready


class Simulation:
    def __init__(self, trace: Trace, profile: PodProfile, policy: Policy, config: SimConfig = SimConfig(), seed: int = 0):
        self.trace = trace
        self.profile = profile
        self.policy = policy
        self.cfg = config
        self.rng = np.random.default_rng(seed)
        self.req = Requests(trace.arrivals, trace.prompt_tokens, trace.max_tokens)
        self.table = profile.step_table()
        self.pods: list[Pod] = []
        self.ready: list[Pod] = []
        self.desired = 0
        self.next_id = 0
        self.prom = Prometheus(config.scrape_interval, config.eval_interval, config.rate_window)
        self.cpu_util: dict[int, float] = {}
        self.keda = KedaAutoscaler(policy.scaled_object) if policy.scaled_object is not None else None
        self.timeline = Timeline()
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = 0

    def _schedule(self, t: float, kind: str, payload: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, payload))

    def _new_pod(self, now: float, warm: bool) -> Pod:
        cold = self.profile.cold_start.total_seconds
        period = self.cfg.readiness_period
        ready_at = now if warm else now + math.ceil(cold / period - 1e-9) * period
        pod = Pod(self.next_id, now, ready_at, self.profile, self.table, self.req)
        self.next_id += 1
        self.pods.append(pod)
        if warm:
            pod.state = READY
            pod.metrics_from = now
            self.ready.append(pod)
        else:
            self._schedule(ready_at, "ready", pod)
        return pod

    def _scale_to(self, now: float, n: int) -> None:
        self.desired = n
        live = [p for p in self.pods if p.state in (STARTING, READY)]
        if len(live) < n:
            for _ in range(n - len(live)):
                self._new_pod(now, warm=False)
        elif len(live) > n:
            # The ReplicaSet deletes not-ready pods first, then the most recently ready.
            victims = sorted(live, key=lambda p: (0 if p.state == STARTING else 1, -p.ready_at))
            for pod in victims[: len(live) - n]:
                if pod in self.ready:
                    self.ready.remove(pod)
                pod.drain(now, self.cfg.termination_grace_seconds)

    @staticmethod
    def _route(i: int, t: float, ready: list[Pod], tie: float) -> None:
        """The least occupied ready pod: its requests in flight (queued, waiting or running) over
        its max_num_seqs; ties at random."""
        best = math.inf
        tied: list[Pod] = []
        for pod in ready:
            pod.settle(t)
            occupancy = pod.inflight / pod.slots
            if occupancy < best:
                best = occupancy
                tied = [pod]
            elif occupancy == best:
                tied.append(pod)
        tied[int(tie * len(tied))].arrive(i, t)

    def _scrape(self, now: float) -> None:
        targets = {}
        gpu_pct = self.profile.gpu_busy_utilization_percent
        prof = self.profile
        for p in self.pods:
            if p.state == GONE:
                continue
            p.advance(now)
            if p.state == GONE:
                continue
            frac = p.busy_fraction(now)
            if p.state == READY:
                self.cpu_util[p.id] = (
                    100.0 * (prof.cpu_idle_cores + (prof.cpu_busy_cores - prof.cpu_idle_cores) * frac) / prof.cpu_request_cores
                )
            if p.state == DRAINING or now < p.metrics_from:
                continue
            targets[p.id] = {
                "success": p.success,
                "queue_us": p.queue_us,
                "model_wait_sum": p.model_wait_sum,
                "model_wait_count": p.model_wait_count,
                "pending": p.pending(),
                "waiting": p.pending() + p.waiting(),
                "occupancy": p.occupancy(),
                "gpu_util": gpu_pct * frac,
                "steps": p.steps,
                "seq_steps": p.seq_steps,
            }
        self.prom.scrape(now, targets)
        self.prom.forget_stale(now)

    def _record(self, now: float) -> None:
        tl = self.timeline
        tl.t.append(now)
        tl.desired.append(self.desired)
        tl.pods.append(sum(1 for p in self.pods if p.state != GONE))
        tl.ready.append(len(self.ready))
        tl.queue_time.append(self.prom.rules.queue_time)
        tl.pending.append(self.prom.rules.pending)
        tl.gpu_utilization.append(self.prom.rules.gpu_utilization)

    def _control(self, now: float, kind: str, payload: object) -> None:
        cfg = self.cfg
        if kind == "ready":
            pod = payload
            if pod.state == STARTING:
                pod.state = READY
                pod.last_scrape = now
                self.ready.append(pod)
        elif kind == "scrape":
            self._scrape(now)
            self._schedule(now + cfg.scrape_interval, kind)
        elif kind == "eval":
            self.prom.evaluate(now)
            self._schedule(now + cfg.eval_interval, kind)
        elif kind == "poll":
            decision = self.keda.poll(now, _View(self, now))
            if decision is not None:
                self._scale_to(now, decision.replicas)
            self._schedule(now + self.keda.so.polling_interval, kind)
        elif kind == "sync":
            decision = self.keda.sync(now, _View(self, now))
            if decision is not None:
                self._scale_to(now, decision.replicas)
            self._schedule(now + cfg.hpa_sync_period, kind)
        elif kind == "record":
            self._record(now)
            self._schedule(now + cfg.record_interval, kind)
        elif kind == "outage":
            self.prom.down = bool(payload)

    def run(self) -> SimResult:
        cfg = self.cfg
        start = self.policy.start_replicas()
        self.desired = start
        for _ in range(start):
            self._new_pod(0.0, warm=True)
        self._schedule(cfg.scrape_interval, "scrape")
        self._schedule(cfg.eval_interval + 0.5, "eval")
        self._schedule(0.0, "record")
        if self.keda is not None:
            self._schedule(1.0, "poll")
            self._schedule(2.0, "sync")
        for a, b in cfg.prometheus_outages:
            self._schedule(a, "outage", True)
            self._schedule(b, "outage", False)

        req = self.req
        arrivals = req.arrival
        n = len(arrivals)
        ties = self.rng.random(n).tolist()
        status = req.status
        events = self._events
        end = self.trace.duration
        i = 0
        while True:
            tc = events[0][0] if events and events[0][0] <= end else math.inf
            ready = self.ready
            while i < n and arrivals[i] < tc:
                t = arrivals[i]
                if ready:
                    self._route(i, t, ready, ties[i])
                else:
                    status[i] = NO_ENDPOINT
                i += 1
            if tc == math.inf:
                break
            tc, _, kind, payload = heapq.heappop(events)
            self._control(tc, kind, payload)
        for p in self.pods:
            if p.state != GONE:
                p.advance(end + cfg.drain_after_end)
        spans = [(p.created, p.ended if p.ended < math.inf else end) for p in self.pods]
        arrival = np.asarray(arrivals)
        overhead = self.profile.request_overhead_seconds
        done = np.asarray(req.done) + overhead
        return SimResult(
            policy=self.policy.name,
            trace=self.trace,
            profile=self.profile,
            arrival=arrival,
            ttft=np.asarray(req.ttft) + overhead,
            latency=done - arrival,
            queue_time=np.asarray(req.queue_time),
            status=np.asarray(status, dtype=np.int8),
            pod_spans=spans,
            timeline=self.timeline,
        )


def simulate(trace: Trace, profile: PodProfile, policy: Policy, config: SimConfig = SimConfig(), seed: int = 0) -> SimResult:
    return Simulation(trace, profile, policy, config, seed).run()

