"""Read the KEDA ScaledObject from a built kustomize overlay (never re-typed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from planner.hpa import Behavior

# Recording rules KEDA may query (docs/contracts.md) and the simulated signal behind each.
SIGNALS = {
    "triton:queue_time_per_request_seconds:avg1m:namespace": "triton_queue_time",
    "qwen3vl:queue_time_per_request_seconds:avg1m:namespace": "queue_time",
    "triton:pending_requests:namespace": "pending",
    "qwen3vl:requests_waiting:namespace": "waiting",
    "qwen3vl:occupancy:namespace": "occupancy",
    "triton:gpu_utilization:avg:namespace": "gpu_utilization",
    "qwen3vl:gpu_utilization_while_waiting:namespace": "gpu_utilization_while_waiting",
    "qwen3vl:batch_size:avg1m": "batch_size",
}
METRIC_TYPES = ("Value", "AverageValue", "Utilization")


class ScaledObjectError(ValueError):
    """The overlay has no usable ScaledObject, or it holds something the simulator cannot model."""


@dataclass(frozen=True)
class Schedule:
    """A daily window of KEDA's cron scaler, in seconds of the day (the simulation starts at 00:00)."""

    start: float
    end: float
    replicas: int

    def active(self, now: float) -> bool:
        t = now % 86400.0
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


def _daily(expr: str, where: str) -> float:
    """'M H * * *' -> seconds of the day; the simulator models daily schedules only."""
    fields = str(expr).split()
    if len(fields) != 5 or fields[2:] != ["*", "*", "*"] or not (fields[0].isdigit() and fields[1].isdigit()):
        raise ScaledObjectError(f"{where}: only daily cron schedules 'M H * * *' are modelled, got {expr!r}")
    minute, hour = int(fields[0]), int(fields[1])
    if minute > 59 or hour > 23:
        raise ScaledObjectError(f"{where}: not a time of day: {expr!r}")
    return hour * 3600.0 + minute * 60.0


@dataclass(frozen=True)
class Trigger:
    name: str
    type: str
    signal: str
    metric_type: str
    threshold: float
    activation_threshold: float = 0.0
    query: str = ""
    # KEDA's Prometheus scaler: an empty result reads as 0 (true, its default) or fails the trigger (false).
    ignore_null_values: bool = True
    metadata: tuple[tuple[str, str], ...] = ()
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    schedule: Schedule | None = None  # a cron trigger's daily window

    def cron_replicas(self, now: float) -> float:
        """KEDA's cron scaler: desiredReplicas inside its window, 1 outside (AverageValue, target 1)."""
        assert self.schedule is not None
        return float(self.schedule.replicas if self.schedule.active(now) else 1)


@dataclass(frozen=True)
class Fallback:
    failure_threshold: int
    replicas: int
    behavior: str = "static"


@dataclass(frozen=True)
class ScaledObjectSpec:
    name: str
    triggers: tuple[Trigger, ...]
    min_replica_count: int = 0
    max_replica_count: int = 100
    polling_interval: float = 30.0
    cooldown_period: float = 300.0
    initial_cooldown_period: float = 0.0
    fallback: Fallback | None = None
    behavior: Behavior = field(default_factory=Behavior)
    source: str = ""
    target: str = ""

    def __post_init__(self) -> None:
        if not self.triggers:
            raise ScaledObjectError(f"ScaledObject {self.name}: no triggers")
        if self.min_replica_count < 0 or self.max_replica_count < max(self.min_replica_count, 1):
            raise ScaledObjectError(
                f"ScaledObject {self.name}: need 0 <= minReplicaCount <= maxReplicaCount and maxReplicaCount >= 1"
            )
        if self.polling_interval <= 0:
            raise ScaledObjectError(f"ScaledObject {self.name}: pollingInterval must be > 0")


def _float(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ScaledObjectError(f"{where} must be a number, got {value!r}") from exc


def _bool(value, where: str) -> bool:
    """Go's strconv.ParseBool, which KEDA parses trigger metadata with."""
    text = str(value)
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ScaledObjectError(f"{where} must be true or false, got {value!r}")


def _signal_for(query: str, where: str) -> str:
    for rule in sorted(SIGNALS, key=len, reverse=True):
        if rule in query:
            signal = SIGNALS[rule]
            if signal == "batch_size" and re.search(r"\bavg\s*(by\b|\()", query):
                return "batch_size_mean"
            return signal
    raise ScaledObjectError(
        f"{where}: the query names none of the recording rules the simulator models "
        f"({', '.join(SIGNALS)}): {query!r}"
    )


def parse_trigger(index: int, doc: dict) -> Trigger:
    where = f"triggers[{index}]"
    if not isinstance(doc, dict):
        raise ScaledObjectError(f"{where} must be a mapping")
    kind = doc.get("type")
    meta = doc.get("metadata") or {}
    name = str(doc.get("name") or f"{kind}-{index}")
    if kind == "prometheus":
        query = meta.get("query")
        if not query:
            raise ScaledObjectError(f"{where}: prometheus trigger without metadata.query")
        metric_type = doc.get("metricType", "AverageValue")
        if metric_type not in ("Value", "AverageValue"):
            raise ScaledObjectError(f"{where}: metricType must be Value or AverageValue, got {metric_type!r}")
        threshold = _float(meta.get("threshold"), f"{where}.metadata.threshold")
        if threshold <= 0:
            raise ScaledObjectError(f"{where}.metadata.threshold must be > 0")
        return Trigger(
            name=name,
            type=kind,
            signal=_signal_for(str(query), where),
            metric_type=metric_type,
            threshold=threshold,
            activation_threshold=_float(meta.get("activationThreshold", 0), f"{where}.metadata.activationThreshold"),
            query=str(query),
            ignore_null_values=_bool(meta.get("ignoreNullValues", "true"), f"{where}.metadata.ignoreNullValues"),
            metadata=tuple((str(k), str(v)) for k, v in meta.items()),
            raw=doc,
        )
    if kind == "cpu":
        metric_type = doc.get("metricType") or meta.get("type") or "Utilization"
        if metric_type != "Utilization":
            raise ScaledObjectError(f"{where}: only cpu metricType Utilization is modelled, got {metric_type!r}")
        return Trigger(name, kind, "cpu", "Utilization", _float(meta.get("value"), f"{where}.metadata.value"))
    if kind == "cron":
        try:
            replicas = int(meta["desiredReplicas"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ScaledObjectError(f"{where}: cron trigger needs an integer metadata.desiredReplicas") from exc
        schedule = Schedule(_daily(meta.get("start"), f"{where}.metadata.start"),
                            _daily(meta.get("end"), f"{where}.metadata.end"), replicas)
        return Trigger(name, kind, "cron", "AverageValue", 1.0, metadata=tuple((str(k), str(v)) for k, v in meta.items()),
                       raw=doc, schedule=schedule)
    raise ScaledObjectError(f"{where}: trigger type {kind!r} is not modelled (prometheus, cron and cpu are)")


def parse_scaled_object(doc: dict, source: str = "") -> ScaledObjectSpec:
    if not isinstance(doc, dict) or doc.get("kind") != "ScaledObject":
        raise ScaledObjectError("not a ScaledObject")
    name = str((doc.get("metadata") or {}).get("name", "scaledobject"))
    spec = doc.get("spec") or {}
    triggers = tuple(parse_trigger(i, t) for i, t in enumerate(spec.get("triggers") or []))
    fallback = None
    if spec.get("fallback"):
        fb = spec["fallback"]
        try:
            fallback = Fallback(int(fb["failureThreshold"]), int(fb["replicas"]), str(fb.get("behavior", "static")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ScaledObjectError(f"ScaledObject {name}: fallback needs failureThreshold and replicas") from exc
    hpa_config = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {})
    try:
        behavior = Behavior.from_spec(hpa_config.get("behavior"))
    except ValueError as exc:
        raise ScaledObjectError(f"ScaledObject {name}: {exc}") from exc
    return ScaledObjectSpec(
        name=name,
        triggers=triggers,
        min_replica_count=int(spec.get("minReplicaCount", 0)),
        max_replica_count=int(spec.get("maxReplicaCount", 100)),
        polling_interval=_float(spec.get("pollingInterval", 30), "pollingInterval"),
        cooldown_period=_float(spec.get("cooldownPeriod", 300), "cooldownPeriod"),
        initial_cooldown_period=_float(spec.get("initialCooldownPeriod", 0), "initialCooldownPeriod"),
        fallback=fallback,
        behavior=behavior,
        source=source,
        target=str((spec.get("scaleTargetRef") or {}).get("name", "")),
    )


def pick_scaled_object(text: str, source: str, name: str | None = None) -> ScaledObjectSpec:
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    found = [d for d in docs if d.get("kind") == "ScaledObject"]
    if name is not None:
        found = [d for d in found if (d.get("metadata") or {}).get("name") == name]
    if not found:
        raise ScaledObjectError(f"{source}: no ScaledObject{' named ' + name if name else ''} in the built output")
    if len(found) > 1:
        names = [(d.get("metadata") or {}).get("name") for d in found]
        raise ScaledObjectError(f"{source}: several ScaledObjects {names}; pick one with --scaledobject NAME")
    return parse_scaled_object(found[0], source)


@dataclass(frozen=True)
class PodSettings:
    """What the rest of the overlay says about start-up, shutdown and monitoring."""

    termination_grace_seconds: float = 30.0
    readiness_period: float = 10.0
    scrape_interval: float = 15.0
    rule_interval: float = 15.0


def _duration(text, default: float) -> float:
    """Prometheus durations as written in monitoring resources: 5s, 1m, 30."""
    if text is None:
        return default
    text = str(text).strip()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * units[unit]
            except ValueError:
                break
    try:
        return float(text)
    except ValueError as exc:
        raise ScaledObjectError(f"not a duration: {text!r}") from exc


def pod_settings(text: str, target: str) -> PodSettings:
    """terminationGracePeriodSeconds and the readiness probe period of the ScaledObject's target,
    the scrape interval of the ServiceMonitor/PodMonitor selecting it, and the evaluation interval
    of the rule group recording the KEDA signals (defaults where the overlay has none)."""
    grace, period = 30.0, 10.0
    scrape, rules = 15.0, 15.0
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind")
        name = (doc.get("metadata") or {}).get("name", "")
        spec = doc.get("spec") or {}
        if kind == "Deployment" and name == target:
            pod = (spec.get("template") or {}).get("spec") or {}
            grace = float(pod.get("terminationGracePeriodSeconds", 30))
            for container in pod.get("containers") or []:
                probe = container.get("readinessProbe")
                if probe:
                    period = float(probe.get("periodSeconds", 10))
                    break
        elif kind in ("ServiceMonitor", "PodMonitor") and target and target in name:
            endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints") or []
            if endpoints:
                scrape = _duration(endpoints[0].get("interval"), scrape)
        elif kind == "PrometheusRule":
            for group in spec.get("groups") or []:
                if any(r.get("record") in SIGNALS for r in group.get("rules") or []):
                    rules = _duration(group.get("interval"), rules)
    return PodSettings(grace, period, scrape, rules)


def build_overlay(overlay: str | Path) -> str:
    """`kubectl kustomize DIR`: the manifests exactly as they would be applied."""
    overlay = Path(overlay)
    if not (overlay / "kustomization.yaml").is_file() and not (overlay / "kustomization.yml").is_file():
        raise ScaledObjectError(f"{overlay} is not a kustomize directory (no kustomization.yaml)")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ScaledObjectError("kubectl is not on PATH: it builds the overlay (kubectl kustomize)")
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ScaledObjectError(f"kubectl kustomize {overlay} failed: {proc.stderr.strip()}")
    return proc.stdout


def load_scaled_object(overlay: str | Path, name: str | None = None) -> ScaledObjectSpec:
    return pick_scaled_object(build_overlay(overlay), str(overlay), name)


def load_overlay(overlay: str | Path, name: str | None = None) -> tuple[ScaledObjectSpec, PodSettings]:
    text = build_overlay(overlay)
    so = pick_scaled_object(text, str(overlay), name)
    return so, pod_settings(text, so.target)
