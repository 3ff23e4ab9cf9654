"""KEDA's part of a ScaledObject: activation (0 <-> 1), the cooldown, fallback, and the
external metrics it hands to the HPA it owns (Value compared as is, AverageValue shared
by the pods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from planner.hpa import HorizontalPodAutoscaler, replicas_for_average_value, replicas_for_pod_metrics, replicas_for_value
from planner.scaledobject import ScaledObjectSpec, Trigger


class ClusterView(Protocol):
    """What the autoscalers can observe of the workload at one instant."""

    def spec_replicas(self) -> int: ...

    def status_replicas(self) -> int: ...

    def ready_replicas(self) -> int: ...

    def query(self, signal: str) -> float | None:
        """The Prometheus query result: a number, NaN for an empty result, None if Prometheus is down."""

    def cpu_utilization(self) -> tuple[list[float], int, int]:
        """metrics-server view for the CPU HPA: (ready pods' utilization %, missing, not ready)."""


@dataclass
class ScaleDecision:
    replicas: int
    reason: str


class KedaAutoscaler:
    """One ScaledObject: the KEDA operator loop plus the HPA it creates."""

    def __init__(self, so: ScaledObjectSpec):
        self.so = so
        self.hpa = HorizontalPodAutoscaler(
            min_replicas=max(so.min_replica_count, 1), max_replicas=so.max_replica_count, behavior=so.behavior
        )
        self.failures = {t.name: 0 for t in so.triggers}
        self.last_active = -math.inf
        self.metric_log: dict[str, float] = {}

    def _value(self, trigger: Trigger, view: ClusterView, now: float) -> float | None:
        """Scaler result. An empty result counts as 0 with ignoreNullValues true (KEDA's default) and
        as a failure with false, like Prometheus being down: the fallback then engages."""
        if trigger.schedule is not None:
            return trigger.cron_replicas(now)
        value = view.query(trigger.signal)
        if value is None or (math.isnan(value) and not trigger.ignore_null_values):
            self.failures[trigger.name] += 1
            return None
        self.failures[trigger.name] = 0
        return 0.0 if math.isnan(value) else value

    def _in_fallback(self, trigger: Trigger) -> bool:
        fb = self.so.fallback
        return (
            fb is not None and trigger.metric_type == "AverageValue" and self.failures[trigger.name] > fb.failure_threshold
        )

    def _fallback_replicas(self, current: int) -> int:
        fb = self.so.fallback
        assert fb is not None
        if fb.behavior == "currentReplicas":
            return current
        if fb.behavior == "currentReplicasIfHigher":
            return max(current, fb.replicas)
        if fb.behavior == "currentReplicasIfLower":
            return min(current, fb.replicas)
        return fb.replicas

    def poll(self, now: float, view: ClusterView) -> ScaleDecision | None:
        """The operator's pollingInterval loop: only moves between 0 and the HPA's range."""
        current = view.spec_replicas()
        active = False
        any_fallback = False
        for trigger in self.so.triggers:
            if trigger.type == "cpu":
                continue
            value = self._value(trigger, view, now)
            if value is None:
                any_fallback |= self._in_fallback(trigger)
                continue
            self.metric_log[trigger.name] = value
            if value > trigger.activation_threshold if trigger.schedule is None else trigger.schedule.active(now):
                active = True
        if active:
            self.last_active = now
            if current == 0:
                return ScaleDecision(max(self.so.min_replica_count, 1), "activated")
            return None
        if any_fallback and current == 0:
            return ScaleDecision(self._fallback_replicas(current), "fallback")
        if current > 0 and self.so.min_replica_count == 0 and not any_fallback:
            cooled = now - self.last_active >= self.so.cooldown_period
            initial = now >= self.so.initial_cooldown_period
            if cooled and initial and not any(t.type == "cpu" for t in self.so.triggers):
                return ScaleDecision(0, "deactivated after cooldown")
        if current < self.so.min_replica_count:
            return ScaleDecision(self.so.min_replica_count, "minReplicaCount")
        return None

    def _tolerance(self, ratio: float) -> float:
        return self.hpa.tolerance_up() if ratio > 1 else self.hpa.tolerance_down()

    def proposals(self, view: ClusterView, now: float = 0.0) -> list[int | None]:
        current = view.spec_replicas()
        out: list[int | None] = []
        for trigger in self.so.triggers:
            target = trigger.threshold
            if trigger.type == "cpu":
                ready_values, missing, unready = view.cpu_utilization()
                ratio = (sum(ready_values) / len(ready_values) / target) if ready_values else 1.0
                out.append(replicas_for_pod_metrics(current, ready_values, missing, unready, target, self._tolerance(ratio)))
                continue
            value = self._value(trigger, view, now)
            if value is None:
                if self._in_fallback(trigger):
                    value = self._fallback_replicas(current) * target
                else:
                    out.append(None)
                    continue
            self.metric_log[trigger.name] = value
            if trigger.metric_type == "Value":
                ratio = value / target
                out.append(replicas_for_value(current, view.ready_replicas(), value, target, self._tolerance(ratio)))
            else:
                status = view.status_replicas()
                ratio = value / (target * status) if status else math.inf
                out.append(replicas_for_average_value(current, status, value, target, self._tolerance(ratio)))
        return out

    def sync(self, now: float, view: ClusterView) -> ScaleDecision | None:
        """The HPA controller's sync (every 15 s); it does nothing while KEDA holds the workload at 0."""
        current = view.spec_replicas()
        if current == 0:
            return None
        desired = self.hpa.reconcile(now, current, self.proposals(view, now))
        return ScaleDecision(desired, "hpa") if desired != current else None
