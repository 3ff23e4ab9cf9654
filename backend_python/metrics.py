"""The model's own Prometheus metrics, exported through Triton's custom-metrics API.

Names and meanings are documented in docs/contracts.md and the README; Triton adds
the ``model`` and ``version`` labels. ``EngineMetrics`` is what the engine calls;
outside Triton (a script, a unit test) it records nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import wire_contract

log = logging.getLogger(__name__)

TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
INTER_TOKEN_BUCKETS = [0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256]
FINISH_REASONS = (*wire_contract.FINISH_REASONS, "error")


class EngineMetrics:
    """No-op base: the engine reports through these methods."""

    def prompt_tokens(self, n: int) -> None: ...
    def generated_tokens(self, n: int) -> None: ...
    def time_to_first_token(self, seconds: float) -> None: ...
    def inter_token(self, seconds: float) -> None: ...
    def queued(self, seconds: float) -> None: ...
    def batch_size(self, n: int) -> None: ...
    def prefill_size(self, n: int) -> None: ...
    def in_flight(self, n: int) -> None: ...
    def max_sequences(self, n: int) -> None: ...
    def waiting(self, n: int) -> None: ...
    def kv_blocks(self, used: int, total: int) -> None: ...
    def cached_prompt_tokens(self, n: int) -> None: ...
    def preempted(self, n: int) -> None: ...
    def videos(self, n: int, tokens: int) -> None: ...
    def processor_cache(self, hits: int, misses: int, held_bytes: int) -> None: ...
    def encoder_cache(self, hits: int, misses: int, held_bytes: int) -> None: ...
    def finished(self, reason: str) -> None: ...
    def model_load(self, seconds: float) -> None: ...


class TritonMetrics(EngineMetrics):
    """Backed by ``pb_utils.MetricFamily``; the families must live as long as the model.

    Every update of a Triton metric is a round trip to the server process. The engine's calls
    therefore only note the change, and a thread applies what accumulated every ``flush_s``
    (histograms, then counters, then gauges: in the order the engine records a step and a finish,
    so that no value shows ahead of the ones behind it). A gauge is sent only when its value has
    changed: the stub keeps the GIL through a gauge's round trip (it lets it go for counters and
    histograms only), and every thread of the model waits meanwhile, the engine's too.
    """

    def __init__(self, pb_utils: Any, labels: dict[str, str], flush_s: float = 0.1):
        family = pb_utils.MetricFamily
        self._families = {
            "prompt": family("qwen3vl_prompt_tokens_total",
                             "Prompt tokens prefilled (computed; images included)", family.COUNTER),
            "cached": family("qwen3vl_prompt_tokens_cached_total",
                             "Prompt tokens served from the prefix cache instead of being prefilled", family.COUNTER),
            "generated": family("qwen3vl_generated_tokens_total", "Tokens generated", family.COUNTER),
            "ttft": family(
                "qwen3vl_time_to_first_token_seconds",
                "Time from the request reaching the model to its first generated token",
                family.HISTOGRAM,
            ),
            "inter_token": family(
                "qwen3vl_inter_token_seconds",
                "Time between two decode steps' tokens reaching the engine while sequences run (one "
                "observation per step): the gap every running stream sees at the model, prefills included",
                family.HISTOGRAM,
            ),
            "queued": family(
                "qwen3vl_queue_seconds",
                "Time from a request reaching the model to its start in the engine (its prompt built, KV blocks "
                "found): the wait Triton's nv_inference_queue_duration_us does not see",
                family.HISTOGRAM,
            ),
            "batch": family("qwen3vl_batch_size", "Sequences in one decode step of the engine", family.HISTOGRAM),
            "prefill": family("qwen3vl_prefill_size", "Prompt chunks in one prefill of the engine", family.HISTOGRAM),
            "in_flight": family("qwen3vl_sequences_in_flight",
                                "Sequences the engine runs (holding KV blocks: prefilling or decoding)", family.GAUGE),
            "max_sequences": family("qwen3vl_max_sequences",
                                    "Sequences the engine runs at most at once (max_num_seqs)", family.GAUGE),
            "waiting": family(
                "qwen3vl_sequences_waiting",
                "Requests handed to the model and not yet running: a dynamic batch being parsed, prompts "
                "being built, and those waiting for KV blocks (Triton's queue holds the rest)",
                family.GAUGE,
            ),
            "kv_used": family("qwen3vl_kv_blocks_used", "KV cache blocks held by running sequences", family.GAUGE),
            "kv_total": family("qwen3vl_kv_blocks_total", "KV cache blocks of the engine's pool", family.GAUGE),
            "preempted": family("qwen3vl_preemptions_total",
                                "Running sequences preempted for lack of KV blocks (recomputed later)", family.COUNTER),
            "videos": family("qwen3vl_videos_total", "Videos in requests the engine accepted", family.COUNTER),
            "video_tokens": family("qwen3vl_video_tokens_total",
                                   "Visual tokens of those videos (their frames' placeholder tokens)", family.COUNTER),
            "processor_hits": family(
                "qwen3vl_processor_cache_hits_total",
                "Images and videos of requests whose processed pixels came from the processor cache", family.COUNTER),
            "processor_misses": family(
                "qwen3vl_processor_cache_misses_total",
                "Images and videos of requests decoded and processed (not in the processor cache)", family.COUNTER),
            "processor_bytes": family("qwen3vl_processor_cache_bytes",
                                      "Host memory the processor cache holds", family.GAUGE),
            "encoder_hits": family(
                "qwen3vl_encoder_cache_hits_total",
                "Images and video temporal patches whose vision encoder output was reused, not computed",
                family.COUNTER),
            "encoder_misses": family("qwen3vl_encoder_cache_misses_total",
                                     "Images and video temporal patches run through the vision encoder",
                                     family.COUNTER),
            "encoder_bytes": family("qwen3vl_encoder_cache_bytes",
                                    "Device memory the encoder cache holds", family.GAUGE),
            "finished": family(
                "qwen3vl_requests_finished_total", "Finished requests by finish reason", family.COUNTER
            ),
            "load": family("qwen3vl_model_load_seconds", "Seconds the model took to load", family.GAUGE),
        }
        f = self._families
        self._prompt = f["prompt"].Metric(labels=labels)
        self._generated = f["generated"].Metric(labels=labels)
        self._ttft = f["ttft"].Metric(labels=labels, buckets=TTFT_BUCKETS)
        self._inter_token = f["inter_token"].Metric(labels=labels, buckets=INTER_TOKEN_BUCKETS)
        self._queued = f["queued"].Metric(labels=labels, buckets=TTFT_BUCKETS)
        self._batch = f["batch"].Metric(labels=labels, buckets=BATCH_BUCKETS)
        self._prefill = f["prefill"].Metric(labels=labels, buckets=BATCH_BUCKETS)
        self._cached = f["cached"].Metric(labels=labels)
        self._in_flight = f["in_flight"].Metric(labels=labels)
        self._max_sequences = f["max_sequences"].Metric(labels=labels)
        self._waiting = f["waiting"].Metric(labels=labels)
        self._kv_used = f["kv_used"].Metric(labels=labels)
        self._kv_total = f["kv_total"].Metric(labels=labels)
        self._preempted = f["preempted"].Metric(labels=labels)
        self._videos = f["videos"].Metric(labels=labels)
        self._video_tokens = f["video_tokens"].Metric(labels=labels)
        self._processor_hits = f["processor_hits"].Metric(labels=labels)
        self._processor_misses = f["processor_misses"].Metric(labels=labels)
        self._processor_bytes = f["processor_bytes"].Metric(labels=labels)
        self._encoder_hits = f["encoder_hits"].Metric(labels=labels)
        self._encoder_misses = f["encoder_misses"].Metric(labels=labels)
        self._encoder_bytes = f["encoder_bytes"].Metric(labels=labels)
        self._finished = {r: f["finished"].Metric(labels={**labels, "reason": r}) for r in FINISH_REASONS}
        self._load = f["load"].Metric(labels=labels)
        self._lock = threading.Lock()
        self._counts: dict[Any, float] = {}
        self._observed: list[tuple[Any, float]] = []
        self._gauges: dict[Any, float] = {}
        self._stop = threading.Event()
        self._flush_s = flush_s
        self._shown: dict[Any, float] = {}  # each gauge's value in Triton, as this thread last set it
        self._thread = threading.Thread(target=self._run, name="qwen3vl-metrics", daemon=True)
        self._thread.start()

    def prompt_tokens(self, n: int) -> None:
        self._count(self._prompt, n)

    def generated_tokens(self, n: int) -> None:
        self._count(self._generated, n)

    def time_to_first_token(self, seconds: float) -> None:
        self._observe(self._ttft, seconds)

    def inter_token(self, seconds: float) -> None:
        self._observe(self._inter_token, seconds)

    def queued(self, seconds: float) -> None:
        self._observe(self._queued, seconds)

    def batch_size(self, n: int) -> None:
        self._observe(self._batch, n)

    def prefill_size(self, n: int) -> None:
        self._observe(self._prefill, n)

    def in_flight(self, n: int) -> None:
        self._set(self._in_flight, n)

    def max_sequences(self, n: int) -> None:
        self._set(self._max_sequences, n)

    def waiting(self, n: int) -> None:
        self._set(self._waiting, n)

    def kv_blocks(self, used: int, total: int) -> None:
        self._set(self._kv_used, used)
        self._set(self._kv_total, total)

    def cached_prompt_tokens(self, n: int) -> None:
        self._count(self._cached, n)

    def preempted(self, n: int) -> None:
        self._count(self._preempted, n)

    def videos(self, n: int, tokens: int) -> None:
        self._count(self._videos, n)
        self._count(self._video_tokens, tokens)

    def processor_cache(self, hits: int, misses: int, held_bytes: int) -> None:
        self._count(self._processor_hits, hits)
        self._count(self._processor_misses, misses)
        self._set(self._processor_bytes, held_bytes)

    def encoder_cache(self, hits: int, misses: int, held_bytes: int) -> None:
        self._count(self._encoder_hits, hits)
        self._count(self._encoder_misses, misses)
        self._set(self._encoder_bytes, held_bytes)

    def finished(self, reason: str) -> None:
        self._count(self._finished[reason], 1)

    def model_load(self, seconds: float) -> None:
        self._set(self._load, seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, observed, gauges = self._counts, self._observed, self._gauges
            self._counts, self._observed, self._gauges = {}, [], {}
        for metric, value in observed:
            metric.observe(value)
        for metric, amount in counts.items():
            metric.increment(amount)
        for metric, value in gauges.items():
            if self._shown.get(metric) != value:
                metric.set(value)
                self._shown[metric] = value

    def _count(self, metric: Any, amount: float) -> None:
        with self._lock:
            self._counts[metric] = self._counts.get(metric, 0) + amount

    def _observe(self, metric: Any, value: float) -> None:
        with self._lock:
            self._observed.append((metric, value))

    def _set(self, metric: Any, value: float) -> None:
        with self._lock:
            self._gauges[metric] = value

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            try:
                self.flush()
            except Exception:  # metrics must never take the model down
                log.exception("updating Triton metrics failed")
