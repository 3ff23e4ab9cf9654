"""A pod profile: what one Triton pod can do, as measured by the benchmark.

The JSON format (documented in planner/README.md) is what `planner.measure` and
`python -m bench.profile` write and what the simulator reads. Fields added since the first
profiles are optional, and their defaults are that first model's behaviour (a prefill pauses
decoding, `execute` costs nothing, no KV or token budget), so older profiles keep their meaning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "qwen3-vl-platform/pod-profile/v1"


class ProfileError(ValueError):
    """The profile file is missing a field or holds a value the simulator cannot use."""


@dataclass(frozen=True)
class ColdStart:
    """Pod created -> first token. `compile_seconds` is what a start adds when the node has neither
    the compile cache nor the compile artifacts (k8s/README.md, "Compile artifacts")."""

    image_pull_seconds: float
    model_load_seconds: float
    warmup_seconds: float
    node_provision_seconds: float = 0.0
    compile_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.node_provision_seconds + self.image_pull_seconds + self.model_load_seconds + self.warmup_seconds

    @property
    def metrics_after_seconds(self) -> float:
        """Triton exports metrics once its process runs: after the node and the image."""
        return self.node_provision_seconds + self.image_pull_seconds


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
    # The paged engine behind Triton (0: no limit, no cost, a prefill pauses decoding, as the first profiles had it).
    kv_cache_tokens: int = 0
    max_num_batched_tokens: int = 0
    decode_seconds_per_cached_token: float = 0.0
    prefill_seconds_per_prompt: float = 0.0
    prefill_seconds_per_token_squared: float = 0.0
    decode_steps_per_prefill: int = 0
    prefill_decode_seconds: float = 0.0
    prefill_decode_seconds_per_sequence: float = 0.0
    execute_seconds_per_request: float = 0.0
    execute_engine_share: float = 0.0
    prompt_workers: int = 1
    response_seconds_per_stream_squared: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_seconds: float = 0.0

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
        paged = (self.kv_cache_tokens, self.max_num_batched_tokens, self.decode_seconds_per_cached_token,
                 self.prefill_seconds_per_prompt, self.prefill_seconds_per_token_squared,
                 self.prefill_decode_seconds, self.prefill_decode_seconds_per_sequence, self.decode_steps_per_prefill,
                 self.execute_seconds_per_request)
        if any(v < 0 for v in paged):
            raise ProfileError("engine limits and costs must be >= 0 (0: no limit / no cost)")
        if self.prompt_workers < 1:
            raise ProfileError("prompt_workers must be >= 1")
        if not 0 <= self.execute_engine_share <= 1:
            raise ProfileError("execute_engine_share must be in [0, 1]")

    def step_table(self) -> list[float]:
        """Decode step time for 0..slots sequences, interpolated between measured batch sizes."""
        xs = np.array([b for b, _ in self.decode_step_seconds], dtype=float)
        ys = np.array([s for _, s in self.decode_step_seconds], dtype=float)
        n = np.arange(self.slots + 1, dtype=float)
        table = np.interp(n, xs, ys)
        return [float(v) for v in table]

    def decode_step(self, running: int, cached_tokens: float) -> float:
        """One decode step of `running` sequences holding `cached_tokens` in the KV cache."""
        return self.step_table()[min(running, self.slots)] + self.decode_seconds_per_cached_token * cached_tokens

    def prefill_seconds(self, tokens: float) -> float:
        """One prompt's prefill pass alone on an idle engine."""
        return (self.prefill_base_seconds + self.prefill_seconds_per_prompt + self.prefill_seconds_per_token * tokens
                + self.prefill_seconds_per_token_squared * tokens * tokens)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "provenance": self.provenance,
            "gpus_per_pod": self.gpus_per_pod,
            "engine": {
                "slots": self.slots,
                "kv_cache_tokens": self.kv_cache_tokens,
                "max_num_batched_tokens": self.max_num_batched_tokens,
                "decode_step_seconds": [[b, s] for b, s in self.decode_step_seconds],
                "decode_seconds_per_cached_token": self.decode_seconds_per_cached_token,
                "prefill_base_seconds": self.prefill_base_seconds,
                "prefill_seconds_per_prompt": self.prefill_seconds_per_prompt,
                "prefill_seconds_per_token": self.prefill_seconds_per_token,
                "prefill_seconds_per_token_squared": self.prefill_seconds_per_token_squared,
                "prefills_per_step": self.prefills_per_step,
                "decode_steps_per_prefill": self.decode_steps_per_prefill,
                "prefill_decode_seconds": self.prefill_decode_seconds,
                "prefill_decode_seconds_per_sequence": self.prefill_decode_seconds_per_sequence,
                "execute_seconds_per_request": self.execute_seconds_per_request,
                "execute_engine_share": self.execute_engine_share,
                "prompt_workers": self.prompt_workers,
                "request_overhead_seconds": self.request_overhead_seconds,
                "response_seconds_per_stream_squared": self.response_seconds_per_stream_squared,
            },
            "triton": {
                "max_batch_size": self.max_batch_size,
                "max_queue_size": self.max_queue_size,
                "queue_timeout_seconds": self.queue_timeout_seconds,
                "preferred_batch_sizes": list(self.preferred_batch_sizes),
                "max_queue_delay_seconds": self.max_queue_delay_seconds,
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


def _sizes(value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= 1 for v in value):
        raise ProfileError(f"triton.preferred_batch_sizes must be a list of sizes >= 1, got {value!r}")
    return tuple(value)


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
        preferred_batch_sizes=_sizes(doc.get("triton", {}).get("preferred_batch_sizes", [])),
        max_queue_delay_seconds=_number(doc, "triton.max_queue_delay_seconds", 0.0),
        cold_start=ColdStart(
            image_pull_seconds=_number(doc, "cold_start.image_pull_seconds"),
            model_load_seconds=_number(doc, "cold_start.model_load_seconds"),
            warmup_seconds=_number(doc, "cold_start.warmup_seconds"),
            node_provision_seconds=_number(doc, "cold_start.node_provision_seconds", 0.0),
            compile_seconds=_number(doc, "cold_start.compile_seconds", 0.0),
        ),
        kv_cache_tokens=int(_number(doc, "engine.kv_cache_tokens", 0)),
        max_num_batched_tokens=int(_number(doc, "engine.max_num_batched_tokens", 0)),
        decode_seconds_per_cached_token=_number(doc, "engine.decode_seconds_per_cached_token", 0.0),
        prefill_seconds_per_prompt=_number(doc, "engine.prefill_seconds_per_prompt", 0.0),
        prefill_seconds_per_token_squared=_number(doc, "engine.prefill_seconds_per_token_squared", 0.0),
        decode_steps_per_prefill=int(_number(doc, "engine.decode_steps_per_prefill", 0)),
        prefill_decode_seconds=_number(doc, "engine.prefill_decode_seconds", 0.0),
        prefill_decode_seconds_per_sequence=_number(doc, "engine.prefill_decode_seconds_per_sequence", 0.0),
        execute_seconds_per_request=_number(doc, "engine.execute_seconds_per_request", 0.0),
        execute_engine_share=_number(doc, "engine.execute_engine_share", 0.0),
        prompt_workers=int(_number(doc, "engine.prompt_workers", 1)),
        response_seconds_per_stream_squared=_number(doc, "engine.response_seconds_per_stream_squared", 0.0),
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
