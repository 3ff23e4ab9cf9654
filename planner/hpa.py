"""The Kubernetes HorizontalPodAutoscaler algorithm (autoscaling/v2), as documented.

Follows the controller's order: one proposal per metric, the highest wins, then the
stabilization windows, then the scale-up/scale-down policies and the min/max clamp.
Times are seconds on the simulation clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_TOLERANCE = 0.1
SYNC_PERIOD_SECONDS = 15.0
CPU_INITIALIZATION_PERIOD_SECONDS = 300.0
INITIAL_READINESS_DELAY_SECONDS = 30.0

SELECT_POLICIES = ("Max", "Min", "Disabled")
POLICY_TYPES = ("Pods", "Percent")


@dataclass(frozen=True)
class ScalingPolicy:
    type: str
    value: int
    period_seconds: int

    def __post_init__(self) -> None:
        if self.type not in POLICY_TYPES:
            raise ValueError(f"scaling policy type must be one of {POLICY_TYPES}, got {self.type!r}")
        if self.value <= 0:
            raise ValueError(f"scaling policy value must be > 0, got {self.value}")
        if not 0 < self.period_seconds <= 1800:
            raise ValueError(f"scaling policy periodSeconds must be in (0, 1800], got {self.period_seconds}")


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_seconds: int
    select_policy: str
    policies: tuple[ScalingPolicy, ...]
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if self.select_policy not in SELECT_POLICIES:
            raise ValueError(f"selectPolicy must be one of {SELECT_POLICIES}, got {self.select_policy!r}")
        if not 0 <= self.stabilization_window_seconds <= 3600:
            raise ValueError("stabilizationWindowSeconds must be in [0, 3600]")


DEFAULT_SCALE_UP = ScalingRules(
    stabilization_window_seconds=0,
    select_policy="Max",
    policies=(ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)),
)
DEFAULT_SCALE_DOWN = ScalingRules(
    stabilization_window_seconds=300,
    select_policy="Max",
    policies=(ScalingPolicy("Percent", 100, 15),),
)


def _rules_from_spec(spec: dict | None, default: ScalingRules, where: str) -> ScalingRules:
    """Fields left out take the API server's defaults, field by field."""
    if spec is None:
        return default
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a mapping, got {type(spec).__name__}")
    policies = default.policies
    if spec.get("policies") is not None:
        try:
            policies = tuple(
                ScalingPolicy(str(p["type"]), int(p["value"]), int(p["periodSeconds"])) for p in spec["policies"]
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}.policies: each needs type, value and periodSeconds ({exc})") from exc
    tolerance = spec.get("tolerance")
    return ScalingRules(
        stabilization_window_seconds=int(spec.get("stabilizationWindowSeconds", default.stabilization_window_seconds)),
        select_policy=str(spec.get("selectPolicy", default.select_policy)),
        policies=policies,
        tolerance=None if tolerance is None else float(tolerance),
    )


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN

    @classmethod
    def from_spec(cls, spec: dict | None) -> Behavior:
        spec = spec or {}
        return cls(
            scale_up=_rules_from_spec(spec.get("scaleUp"), DEFAULT_SCALE_UP, "behavior.scaleUp"),
            scale_down=_rules_from_spec(spec.get("scaleDown"), DEFAULT_SCALE_DOWN, "behavior.scaleDown"),
        )


def _within(ratio: float, tolerance: float) -> bool:
    return abs(1.0 - ratio) <= tolerance


def replicas_for_value(current: int, ready: int, value: float, target: float, tolerance: float) -> int:
    """External metric with target type Value: the ratio is applied to the ready pods."""
    ratio = value / target
    if current == 0:
        return math.ceil(ratio)
    if _within(ratio, tolerance):
        return current
    return math.ceil(ratio * ready)


def replicas_for_average_value(current: int, status_replicas: int, total: float, target: float, tolerance: float) -> int:
    """External metric with target type AverageValue: the total is shared by the pods."""
    if status_replicas <= 0:
        return math.ceil(total / target)
    ratio = total / (target * status_replicas)
    if _within(ratio, tolerance):
        return current
    return math.ceil(total / target)


def replicas_for_pod_metrics(
    current: int, ready_values: list[float], missing: int, unready: int, target: float, tolerance: float
) -> int:
    """Per-pod metrics (e.g. CPU utilization): missing and not-yet-ready pods are set aside, then
    counted conservatively (missing: 100 % of target when scaling down, 0 % when scaling up;
    not ready: 0 % when scaling up) and the action is dropped if that reverses the direction.
    """
    if not ready_values:
        return current
    ratio = sum(ready_values) / (target * len(ready_values))
    if missing == 0 and unready == 0:
        if _within(ratio, tolerance):
            return current
        return math.ceil(ratio * len(ready_values))
    scale_up = ratio > 1.0
    values = list(ready_values)
    if missing:
        values += [0.0 if scale_up else target] * missing
    if scale_up and unready:
        values += [0.0] * unready
    new_ratio = sum(values) / (target * len(values))
    if _within(new_ratio, tolerance) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current
    proposed = math.ceil(new_ratio * len(values))
    if (new_ratio < 1.0 and proposed > current) or (new_ratio > 1.0 and proposed < current):
        return current
    return proposed


@dataclass
class HorizontalPodAutoscaler:
    """State the controller keeps between syncs: past recommendations and scale events."""

    min_replicas: int
    max_replicas: int
    behavior: Behavior = field(default_factory=Behavior)
    tolerance: float = DEFAULT_TOLERANCE
    _recommendations: list[tuple[float, int]] = field(default_factory=list)
    _up_events: list[tuple[float, int]] = field(default_factory=list)
    _down_events: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError(f"HPA minReplicas must be >= 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"HPA maxReplicas {self.max_replicas} is below minReplicas {self.min_replicas}")

    def tolerance_up(self) -> float:
        return self.behavior.scale_up.tolerance if self.behavior.scale_up.tolerance is not None else self.tolerance

    def tolerance_down(self) -> float:
        t = self.behavior.scale_down.tolerance
        return t if t is not None else self.tolerance

    def reconcile(self, now: float, current: int, proposals: list[int | None]) -> int:
        """One sync: `proposals` holds each metric's replica count (None: the metric failed)."""
        if current == 0:
            return 0
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        else:
            valid = [p for p in proposals if p is not None]
            if not valid:
                return current
            desired = max(valid)
            if len(valid) < len(proposals) and desired < current:
                desired = current
            desired = self._stabilize(now, current, desired)
            desired = self._limit_rate(now, current, desired)
        if desired != current:
            self._record_event(now, desired - current)
        return desired

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        up_cutoff = now - self.behavior.scale_up.stabilization_window_seconds
        down_cutoff = now - self.behavior.scale_down.stabilization_window_seconds
        up = down = desired
        for t, rec in self._recommendations:
            if t > up_cutoff:
                up = min(up, rec)
            if t > down_cutoff:
                down = max(down, rec)
        keep_after = min(up_cutoff, down_cutoff)
        self._recommendations = [(t, r) for t, r in self._recommendations if t > keep_after]
        self._recommendations.append((now, desired))
        return min(max(current, up), down)

    def _changes_in_period(self, now: float, period: int, events: list[tuple[float, int]]) -> int:
        cutoff = now - period
        return sum(abs(d) for t, d in events if t > cutoff)

    def _period_start(self, now: float, current: int, period: int) -> int:
        added = self._changes_in_period(now, period, self._up_events)
        removed = self._changes_in_period(now, period, self._down_events)
        return current - added + removed

    def scale_up_limit(self, now: float, current: int) -> int:
        rules = self.behavior.scale_up
        if rules.select_policy == "Disabled":
            return current
        choose = min if rules.select_policy == "Min" else max
        result: int | None = None
        for p in rules.policies:
            start = self._period_start(now, current, p.period_seconds)
            if p.type == "Pods":
                proposed = start + p.value
            else:
                proposed = math.ceil(start * (1 + p.value / 100))
            result = proposed if result is None else choose(result, proposed)
        return current if result is None else result

    def scale_down_limit(self, now: float, current: int) -> int:
        rules = self.behavior.scale_down
        if rules.select_policy == "Disabled":
            return current
        choose = max if rules.select_policy == "Min" else min
        result: int | None = None
        for p in rules.policies:
            start = self._period_start(now, current, p.period_seconds)
            if p.type == "Pods":
                proposed = start - p.value
            else:
                proposed = int(start * (1 - p.value / 100))
            result = proposed if result is None else choose(result, proposed)
        return current if result is None else result

    def _limit_rate(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            limit = max(self.scale_up_limit(now, current), current)
            return min(desired, self.max_replicas, limit)
        if desired < current:
            limit = min(self.scale_down_limit(now, current), current)
            return max(desired, self.min_replicas, limit)
        return desired

    def _record_event(self, now: float, delta: int) -> None:
        longest = max(
            [p.period_seconds for p in self.behavior.scale_up.policies + self.behavior.scale_down.policies] or [0]
        )
        cutoff = now - longest
        self._up_events = [e for e in self._up_events if e[0] > cutoff]
        self._down_events = [e for e in self._down_events if e[0] > cutoff]
        (self._up_events if delta > 0 else self._down_events).append((now, delta))
