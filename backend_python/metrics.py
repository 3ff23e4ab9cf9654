"""The model's own Prometheus metrics, exported through Triton's custom-metrics API.

Names and meanings are documented in docs/contracts.md and the README; Triton adds
the ``model`` and ``version`` labels. ``EngineMetrics`` is what the engine calls;
outside Triton (a script, a unit test) it records nothing.
"""

from __future__ import annotations

from typing import Any

TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256]
FINISH_REASONS = ("stop", "length", "cancelled", "error")


class EngineMetrics:
    """No-op base: the engine reports through these methods."""

    def prompt_tokens(self, n: int) -> None: ...
    def generated_tokens(self, n: int) -> None: ...
    def time_to_first_token(self, seconds: float) -> None: ...
    def batch_size(self, n: int) -> None: ...
    def in_flight(self, n: int) -> None: ...
    def slots(self, n: int) -> None: ...
    def waiting(self, n: int) -> None: ...
    def finished(self, reason: str) -> None: ...
    def model_load(self, seconds: float) -> None: ...


class TritonMetrics(EngineMetrics):
    """Backed by ``pb_utils.MetricFamily``; the families must live as long as the model."""

    def __init__(self, pb_utils: Any, labels: dict[str, str]):
        family = pb_utils.MetricFamily
        self._families = {
            "prompt": family("qwen3vl_prompt_tokens_total", "Prompt tokens processed (images included)", family.COUNTER),
            "generated": family("qwen3vl_generated_tokens_total", "Tokens generated", family.COUNTER),
            "ttft": family(
                "qwen3vl_time_to_first_token_seconds",
                "Time from the request reaching the model to its first generated token",
                family.HISTOGRAM,
            ),
            "batch": family("qwen3vl_batch_size", "Sequences in one decode step of the engine", family.HISTOGRAM),
            "in_flight": family("qwen3vl_sequences_in_flight", "Sequences holding a slot of the engine", family.GAUGE),
            "slots": family("qwen3vl_slots", "Sequences the engine can hold at once", family.GAUGE),
            "waiting": family(
                "qwen3vl_sequences_waiting",
                "Requests handed to the model that wait for a slot or their prefill (Triton's queue holds the rest)",
                family.GAUGE,
            ),
            "finished": family(
                "qwen3vl_requests_finished_total", "Finished requests by finish reason", family.COUNTER
            ),
            "load": family("qwen3vl_model_load_seconds", "Seconds the model took to load", family.GAUGE),
        }
        f = self._families
        self._prompt = f["prompt"].Metric(labels=labels)
        self._generated = f["generated"].Metric(labels=labels)
        self._ttft = f["ttft"].Metric(labels=labels, buckets=TTFT_BUCKETS)
        self._batch = f["batch"].Metric(labels=labels, buckets=BATCH_BUCKETS)
        self._in_flight = f["in_flight"].Metric(labels=labels)
        self._slots = f["slots"].Metric(labels=labels)
        self._waiting = f["waiting"].Metric(labels=labels)
        self._finished = {r: f["finished"].Metric(labels={**labels, "reason": r}) for r in FINISH_REASONS}
        self._load = f["load"].Metric(labels=labels)

    def prompt_tokens(self, n: int) -> None:
        self._prompt.increment(n)

    def generated_tokens(self, n: int) -> None:
        self._generated.increment(n)

    def time_to_first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def batch_size(self, n: int) -> None:
        self._batch.observe(n)

    def in_flight(self, n: int) -> None:
        self._in_flight.set(n)

    def slots(self, n: int) -> None:
        self._slots.set(n)

    def waiting(self, n: int) -> None:
        self._waiting.set(n)

    def finished(self, reason: str) -> None:
        self._finished[reason].increment(1)

    def model_load(self, seconds: float) -> None:
        self._load.set(seconds)
