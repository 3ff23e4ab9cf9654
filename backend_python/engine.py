"""The generation engine: continuous batching over a paged KV cache, with prefix caching and chunked prefill.

One background thread owns the model. Each iteration
1. the scheduler plans the step (scheduler.py): the block for every decoding
   sequence's next token, then prompt chunks up to the step's token budget, admitting
   waiting requests whose prompt fits, from the longest cached prefix on;
2. the model runner launches the chunks' prefill (model_runner.py) and then one decode
   step of every decoding sequence, without waiting for the device; with
   ``decode_during_prefill``, decode steps also go in between the prefill's layers;
3. while the device runs that step, the tokens of the step before are streamed and
   finished sequences give up their blocks (output.py).

A new request therefore waits at most one step (plus its own prefill), never for
another request's whole answer. ``submit`` blocks while the engine already holds
requests that wait for KV blocks, so the rest wait in Triton's own queue, where its
queue metrics and queue policy see them.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator

import torch

from .config import EngineConfig
from .errors import EngineFailure, LimitExceeded, Overloaded, ServingError
from .loader import LoadedModel
from .metrics import EngineMetrics
from .model_runner import Launched, ModelRunner
from .output import OutputProcessor
from .prompt import Prompt
from .request import GenerationRequest
from .scheduler import Scheduler, StepPlan
from .sequence import ResponseSink, Sequence
from .stats import EngineStats

log = logging.getLogger(__name__)

__all__ = ["Engine", "ResponseSink"]


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, metrics: EngineMetrics | None = None):
        self.config = config
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.metrics = metrics or EngineMetrics()
        self.runner = ModelRunner(loaded, config)
        self.output = OutputProcessor(self.tokenizer, _eos_ids(self.model, self.tokenizer), config.stream_interval_ms,
                                      self.metrics)
        self.scheduler: Scheduler | None = None  # once the runner has sized the KV cache
        self.stats = EngineStats()
        cuda = self.device.type == "cuda"
        # On a GPU only captured steps run during a prefill (an eager one costs the host what the
        # prefill's layers do); on a CPU they simply take turns with the prefill's layers.
        self._overlap = config.decode_during_prefill and (self.runner.graphs is not None or not cuda)
        self._lock = threading.Condition()
        self._arriving = 0  # requests handed to the model and not yet submitted (parsed, prompts being built)
        self._blocked = 0  # callers of submit() waiting for room
        self._pending: deque[Launched] = deque()  # launched, not yet streamed (oldest first)
        self._last_step_at: float | None = None  # when the last decode step's tokens reached the host
        self._decoded_at = 0.0  # when the last decode step was launched
        self._step_seconds = 0.0  # what a decode step takes the device, lately
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="qwen3vl-engine", daemon=True)

    # -- the caller's side -------------------------------------------------------------

    def start(self) -> "Engine":
        """Compile (with ``compile_decode``) and size the KV cache before the model reports ready, then
        start the engine thread."""
        blocks = self.runner.start()
        self.scheduler = Scheduler(self.config, blocks)
        self.stats.kv_blocks_total = blocks
        log.info("KV cache: %d blocks of %d tokens (%d tokens, %.2f GiB), %d sequences at most", blocks,
                 self.config.block_size, blocks * self.config.block_size, self.runner.cache.bytes / 2**30,
                 self.config.max_num_seqs)
        self.metrics.max_sequences(self.config.max_num_seqs)
        self.metrics.kv_blocks(0, blocks)
        self.metrics.in_flight(0)
        self._thread.start()
        return self

    @property
    def start_timings(self) -> dict[str, float]:
        return self.runner.start_timings

    @property
    def compile_artifacts(self):
        return self.runner.compile_artifacts

    def arrived(self, n: int) -> None:
        """``n`` requests reached the model (a dynamic batch): they count as waiting from now on, while
        they are parsed and their prompts built, until each is submitted or ``dropped``."""
        with self._lock:
            self._arriving += n
        self._report_waiting()

    def dropped(self, n: int = 1) -> None:
        """Requests announced by ``arrived`` that were refused before ``submit``."""
        self.arrived(-n)

    def submit(self, request: GenerationRequest, prompt: Prompt, sink: ResponseSink,
               timeout: float | None = None, arrival: float | None = None, announced: bool = False) -> None:
        """Hand over one sequence; blocks while earlier ones wait for KV blocks (the backpressure).
        ``arrival``: when the request reached the model; ``announced``: counted by ``arrived``."""
        total = prompt.length + request.sampling.max_tokens
        if total > self.config.max_model_len or not self.scheduler.fits(total):
            with self._lock:
                self._arriving -= announced
            self._report_waiting()
            limit = min(self.config.max_model_len, self.scheduler.blocks.num_blocks * self.config.block_size)
            raise LimitExceeded(f"invalid request: the prompt ({prompt.length} tokens) plus max_tokens "
                                f"({request.sampling.max_tokens}) exceeds the context of {limit} tokens")
        if prompt.videos:
            self.metrics.videos(prompt.videos, prompt.video_tokens)
        seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(62)
        sequence = Sequence(request=request, prompt=prompt, sink=sink, text=self.output.text_stream(request),
                            seed=seed)
        if arrival is not None:
            sequence.arrival = arrival
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._arriving -= announced
            self._blocked += 1
            try:
                while not self._stopping and not self.scheduler.has_room(prompt.length):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise Overloaded("the engine has no room for the request; retry later")
                    self._lock.wait(left)
                if self._stopping:
                    raise Overloaded("the model is shutting down")
                self.scheduler.add(sequence)
            finally:
                self._blocked -= 1
            self._lock.notify_all()
        self._report_waiting()

    def has_room(self, prompt_tokens: int) -> bool:
        """Whether ``submit`` would take a prompt of ``prompt_tokens`` now, without waiting for room."""
        with self._lock:
            return self._stopping or self.scheduler.has_room(prompt_tokens)

    def submit_many(self, items: Iterable[tuple[GenerationRequest, Prompt, ResponseSink]],
                    arrival: float | None = None, announced: bool = False) -> None:
        """``submit`` each in order (a Triton batch), failing the sink of one the engine refuses; returns
        once the engine has taken them all."""
        for request, prompt, sink in items:
            try:
                self.submit(request, prompt, sink, arrival=arrival, announced=announced)
            except ServingError as exc:
                sink.fail(exc)
            except Exception as exc:  # one request's fault must not lose the rest of the batch
                log.exception("submitting request %s failed", request.request_id)
                sink.fail(EngineFailure(f"internal error: {exc}"))

    @contextlib.contextmanager
    def arriving_together(self) -> Iterator[None]:
        """Sequences submitted inside start in the same step, as a burst that reaches the model at once
        (a benchmark's bursts); ``submit`` still waits for room, letting steps run meanwhile."""
        with self._lock:
            yield

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new sequences and let the admitted ones finish, waiting up to ``timeout`` seconds.

        Triton calls this when the model unloads, after its own exit timeout has let in-flight
        streams drain; whatever still runs after that is ended with the process.
        """
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def in_flight(self) -> int:
        """Sequences handed over and not finished."""
        return self.scheduler.unfinished if self.scheduler else 0

    # -- the engine thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self.scheduler.unfinished and not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self.scheduler.unfinished and not self._pending:
                    return
                self._drop_cancelled()
                started = time.perf_counter()
                plan = self.scheduler.schedule()
                self.stats.add(schedule=time.perf_counter() - started)
                if plan.admitted:  # a caller blocked behind the admitted ones may hand its request over now
                    self._lock.notify_all()
            self._account(plan)
            try:
                with torch.inference_mode():
                    if plan.prefill:
                        self._prefill(plan)
                    launched = self._decode()
                    # The step just launched runs while the host streams the one before it.
                    while len(self._pending) > (1 if launched else 0):
                        self._collect(self._pending.popleft())
                if not launched:  # no stream waits for a next token until one runs again
                    self._last_step_at = None
                if not (plan.prefill or launched or self._pending):
                    with self._lock:  # nothing could run: wait for a finish or a new request
                        self._lock.wait(0.005)
            except Exception as exc:  # the model must survive a bad step: fail its sequences, go on
                log.exception("engine step failed")
                failed = {id(s): s for s in [c.seq for c in plan.prefill] + list(self.scheduler.running)
                          + [s for out in self._pending for s in out.batch]}
                self._pending.clear()
                for sequence in failed.values():
                    self._finish(sequence, error=EngineFailure(f"internal error in the engine: {exc}"))
            # Keep no finished sequence (and its response sender) alive while waiting for work.
            plan = None

    def _prefill(self, plan: StepPlan) -> None:
        started = time.perf_counter()
        prefilling = tuple(c.seq for c in plan.prefill)
        between = (lambda: self._keep_decoding(prefilling)) if self._overlap and self._pending else None
        runner = self.runner
        encoded, reused = runner.visuals_encoded, runner.visuals_from_cache
        launched = runner.prefill(plan.prefill, between)
        if launched is not None:
            self._pending.append(launched)
        encoded, reused = runner.visuals_encoded - encoded, runner.visuals_from_cache - reused
        if encoded or reused:
            self.metrics.encoder_cache(reused, encoded, runner.encoded.nbytes)
        tokens = sum(c.end - c.start for c in plan.prefill)
        self.metrics.prompt_tokens(tokens)
        self.metrics.prefill_size(len(plan.prefill))
        self.stats.add(prefills=1, prefill_chunks=len(plan.prefill), prompt_tokens=tokens, visuals_encoded=encoded,
                       visuals_from_cache=reused, graphed_prefills=self.runner.graphed(tokens),
                       prefill=time.perf_counter() - started)

    def _decode(self, skip: tuple[Sequence, ...] = (), capture: bool = True) -> bool:
        """Launch one decode step of every decoding sequence (not those of ``skip``); with ``capture``
        False only if its graph is captured already."""
        started = time.perf_counter()
        with self._lock:
            rows = self.scheduler.decode(skip)
            if rows and not capture and not self.runner.can_launch(rows):
                self.scheduler.undo(rows)
                return False
        if not rows:
            return False
        self._pending.append(self.runner.decode(rows))
        self._decoded_at = time.perf_counter()
        self.metrics.batch_size(len(rows))
        self.stats.add(decode_steps=1, decode_rows=len(rows), launch=time.perf_counter() - started)
        return True

    def _keep_decoding(self, prefilling: tuple[Sequence, ...]) -> None:
        """Between a prefill's layers: stream the decode steps the device has run, and once it has run
        them all, launch the next. On a GPU a prefill of a few prompts is host-bound (an image prompt:
        ~50 ms of launches for ~9 ms of work), and without this every running stream waits it out; a
        chunk deep in a long prompt is device-bound (~75 ms for 1,024 tokens after 32K): the runner paces
        its layers, and a decode step goes in once the streams have waited ``decode_gap_during_prefill``
        decode steps: the prefill gets the rest of the device. Sequences that finish here give up their
        blocks as usual."""
        gap = self.config.decode_gap_during_prefill
        paced = bool(gap) and self.runner.pace()
        while self._pending and self._pending[0].done():
            self._collect(self._pending.popleft())
        due = not paced or time.perf_counter() - self._decoded_at >= gap * self._step_seconds
        if not self._pending and due and self._decode(skip=prefilling, capture=False):
            self.stats.add(decode_steps_in_prefill=1)

    def _collect(self, output: Launched) -> None:
        """Wait for one launched step's tokens and stream them."""
        started = time.perf_counter()
        tokens = output.tokens()
        collected = time.perf_counter()
        took = output.device_seconds()
        if took is not None:
            self._step_seconds = took if not self._step_seconds else 0.8 * self._step_seconds + 0.2 * took
        if output.decode:
            if self._last_step_at is not None:
                self.metrics.inter_token(collected - self._last_step_at)
            self._last_step_at = collected
        for sequence in self.output.process(output.batch, tokens):
            self._finish(sequence)
        self.stats.add(wait=collected - started, stream=time.perf_counter() - collected)

    def _drop_cancelled(self) -> None:
        """Requests cancelled while they wait, or while their prompt is prefilled in chunks, end now
        rather than at their first token (a long prompt is seconds of GPU work); under the lock."""
        stopped = [s for s in (*self.scheduler.waiting, *(s for s in self.scheduler.running if s.prefilling))
                   if not s.in_flight and self.output.cancelled(s)]
        for sequence in stopped:
            self.scheduler.finish(sequence)
            self._report_occupancy()
            self.metrics.finished(self.output.reason(sequence, None))
            self.output.finish(sequence)
            self._lock.notify_all()

    def _account(self, plan: StepPlan) -> None:
        now = time.monotonic()
        for sequence in plan.admitted:
            if sequence.started_at is None:
                sequence.started_at = now
                self.metrics.queued(now - sequence.arrival)
            self.metrics.cached_prompt_tokens(sequence.cached)
            self.stats.add(cached_tokens=sequence.cached)
        if plan.preempted:
            self.metrics.preempted(len(plan.preempted))
            self.stats.add(preemptions=len(plan.preempted))
        self._report_occupancy()
        if plan.admitted or plan.preempted:
            self._report_waiting()

    def _report_occupancy(self) -> None:
        blocks = self.scheduler.blocks
        self.stats.kv_blocks_used = blocks.used
        self.metrics.kv_blocks(blocks.used, blocks.num_blocks)
        self.metrics.in_flight(len(self.scheduler.running))

    def _report_waiting(self) -> None:
        with self._lock:
            waiting = self._arriving + self._blocked + (len(self.scheduler.waiting) if self.scheduler else 0)
        self.metrics.waiting(waiting)

    def _finish(self, sequence: Sequence, error: ServingError | None = None) -> None:
        if sequence.finished:
            return
        # Counted before its blocks show free, so whoever sees them free sees the count too.
        self.metrics.finished(self.output.reason(sequence, error))
        with self._lock:
            self.scheduler.finish(sequence)
            self._report_occupancy()
            self._lock.notify_all()
        self.output.finish(sequence, error)


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
