"""A pod profile: what one Triton pod can do, as measured by the benchmark.

The JSON format (documented in planner/README.md) is what `planner.measure` and
`make bench` write and what the simulator reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "qwen3-vl-platform/pod-profile/v1"


class ProfileError(ValueError):
    """The profile file is missing a field or holds a value the simulator cannot use."""


@dataclass(frozen=True)
class ColdStart:
    image_pull_seconds: float
    model_load_seconds: float
    warmup_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.image_pull_seconds + self.model_load_seconds + self.warmup_seconds


@dataclass(frozen=True)
class PodProfile:
    name: str
    provenance: str
    slots: int
    max_batch_size: int
    max_queue_size: int
    prefill_base_seconds: float
    prefill_seconds_per_token: float
    decode_step_seconds: tuple[tuple[int, float], ...]
    cold_start: ColdStart
    gpus_per_pod: int = 1
    prefills_per_step: int = 0
    request_overhead_seconds: float = 0.0
    queue_timeout_seconds: float = 0.0
    cpu_request_cores: float = 1.0
    cpu_idle_cores: float = 0.05
    cpu_busy_cores: float = 1.0
    gpu_busy_utilization_percent: float = 100.0
    measured: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ProfileError(f"slots must be >= 1, got {self.slots}")
        if self.max_batch_size < 1:
            raise ProfileError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_size < 0:
            raise ProfileError(f"max_queue_size must be >= 0 (0: unbounded), got {self.max_queue_size}")
        if self.prefill_base_seconds < 0 or self.prefill_seconds_per_token < 0:
            raise ProfileError("prefill times must be >= 0")
        if not self.decode_step_seconds:
            raise ProfileError("decode_step_seconds needs at least one [batch, seconds] point")
        batches = [b for b, _ in self.decode_step_seconds]
        if batches != sorted(set(batches)) or batches[0] < 1:
            raise ProfileError(f"decode_step_seconds batches must be increasing and >= 1, got {batches}")
        if any(s <= 0 for _, s in self.decode_step_seconds):
            raise ProfileError("decode step times must be > 0")
        if self.request_overhead_seconds < 0:
            raise ProfileError("request_overhead_seconds must be >= 0")
        if self.prefills_per_step < 0 or self.queue_timeout_seconds < 0:
            raise ProfileError("prefills_per_step and queue_timeout_seconds must be >= 0 (0: no limit)")
        if self.gpus_per_pod < 0:
            raise ProfileError("gpus_per_pod must be >= 0")
        if self.cpu_request_cores <= 0:
            raise ProfileError("cpu.request_cores must be > 0")

    def step_table(self) -> list[float]:
        """Decode step time for 0..slots sequences, interpolated between measured batch sizes."""
        xs = np.array([b for b, _ in self.decode_step_seconds], dtype=float)
        ys = np.array([s for _, s in self.decode_step_seconds], dtype=float)
        n = np.arange(self.slots + 1, dtype=float)
        table = np.interp(n, xs, ys)
        return [float(v) for v in table]

    def capacity_rps(self, prompt_tokens: float, max_tokens: float) -> float:
        """Sustainable requests/s of one pod with every slot busy: the decode steps of a full
        engine are shared with the prefills that keep it full."""
        step = self.step_table()[self.slots]
        prefill = self.prefill_base_seconds / self.max_batch_size + self.prefill_seconds_per_token * prompt_tokens
        decode_steps = max(max_tokens - 1.0, 0.0)
        per_request = decode_steps * step / self.slots + prefill
        return 1.0 / per_request if per_request > 0 else math.inf

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "provenance": self.provenance,
            "gpus_per_pod": self.gpus_per_pod,
            "engine": {
                "slots": self.slots,
                "prefill_base_seconds": self.prefill_base_seconds,
                "prefill_seconds_per_token": self.prefill_seconds_per_token,
                "decode_step_seconds": [[b, s] for b, s in self.decode_step_seconds],
                "prefills_per_step": self.prefills_per_step,
                "request_overhead_seconds": self.request_overhead_seconds,
            },
            "triton": {
                "max_batch_size": self.max_batch_size,
                "max_queue_size": self.max_queue_size,
                "queue_timeout_seconds": self.queue_timeout_seconds,
            },
            "cold_start": asdict(self.cold_start),
            "cpu": {
                "request_cores": self.cpu_request_cores,
                "idle_cores": self.cpu_idle_cores,
                "busy_cores": self.cpu_busy_cores,
            },
            "gpu": {"busy_utilization_percent": self.gpu_busy_utilization_percent},
            "measured": self.measured,
        }


def _get(doc: dict, path: str):
    node = doc
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ProfileError(f"profile is missing '{path}'")
        node = node[key]
    return node


def _number(doc: dict, path: str, default: float | None = None) -> float:
    try:
        value = _get(doc, path)
    except ProfileError:
        if default is None:
            raise
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"profile field '{path}' must be a number, got {value!r}")
    return float(value)


def profile_from_json(doc: dict) -> PodProfile:
    if not isinstance(doc, dict):
        raise ProfileError("a profile is a JSON object")
    if doc.get("format") != FORMAT:
        raise ProfileError(f"profile 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    points = _get(doc, "engine.decode_step_seconds")
    try:
        steps = tuple((int(b), float(s)) for b, s in points)
    except (TypeError, ValueError) as exc:
        raise ProfileError("engine.decode_step_seconds must be a list of [batch, seconds] pairs") from exc
    return PodProfile(
        name=str(_get(doc, "name")),
        provenance=str(doc.get("provenance", "")),
        gpus_per_pod=int(_number(doc, "gpus_per_pod", 1)),
        slots=int(_number(doc, "engine.slots")),
        prefill_base_seconds=_number(doc, "engine.prefill_base_seconds"),
        prefill_seconds_per_token=_number(doc, "engine.prefill_seconds_per_token"),
        decode_step_seconds=steps,
        max_batch_size=int(_number(doc, "triton.max_batch_size")),
        max_queue_size=int(_number(doc, "triton.max_queue_size")),
        prefills_per_step=int(_number(doc, "engine.prefills_per_step", 0)),
        request_overhead_seconds=_number(doc, "engine.request_overhead_seconds", 0.0),
        queue_timeout_seconds=_number(doc, "triton.queue_timeout_seconds", 0.0),
        cold_start=ColdStart(
            image_pull_seconds=_number(doc, "cold_start.image_pull_seconds"),
            model_load_seconds=_number(doc, "cold_start.model_load_seconds"),
            warmup_seconds=_number(doc, "cold_start.warmup_seconds"),
        ),
        cpu_request_cores=_number(doc, "cpu.request_cores", 1.0),
        cpu_idle_cores=_number(doc, "cpu.idle_cores", 0.05),
        cpu_busy_cores=_number(doc, "cpu.busy_cores", 1.0),
        gpu_busy_utilization_percent=_number(doc, "gpu.busy_utilization_percent", 100.0),
        measured=dict(doc.get("measured") or {}),
    )


def load_profile(path: str | Path) -> PodProfile:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ProfileError(f"profile file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return profile_from_json(doc)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from exc
