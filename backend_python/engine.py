"""The generation engine: continuous batching over a preallocated, slot-based KV cache.

One background thread owns the model. Each iteration it
1. admits up to ``prefills_per_step`` waiting sequences: one batched prefill
   (vision encoder and prompt, left-padded) through the Hugging Face model, whose
   keys and values are copied into the sequences' cache slots;
2. runs one decode step for every running sequence, through the checkpoint's own
   decoder layers, reading and writing the slot cache in place;
3. streams the new text, and frees the slots of finished or cancelled sequences.

A new request therefore waits at most one decode step (plus its own prefill),
never for another request's whole answer. Capacity is the number of slots:
``submit`` blocks while they are all taken, which keeps waiting requests in
Triton's own queue (backpressure) where its queue metrics and queue policy see them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .config import EngineConfig
from .decode import DecodeStep
from .decoding import TextStream
from .errors import Cancelled, EngineFailure, Overloaded, ServingError
from .loader import LoadedModel
from .metrics import EngineMetrics
from .prompt import Prompt
from .request import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, GenerationChunk, GenerationRequest
from .sampling import select

log = logging.getLogger(__name__)

_CANCEL_CHECK_S = 0.05


class ResponseSink(Protocol):
    """Where a sequence's responses go (a Triton response sender, or a list in tests)."""

    def send(self, chunk: GenerationChunk, final: bool) -> None: ...
    def fail(self, error: ServingError) -> None: ...
    def is_cancelled(self) -> bool: ...


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    prompt: Prompt
    sink: ResponseSink
    text: TextStream
    seed: int
    arrival: float = field(default_factory=time.monotonic)
    slot: int = -1
    length: int = 0  # tokens held in the KV cache
    position: int = 0  # rotary position of the next token
    last_token: int = 0
    generated: int = 0
    pending: str = ""  # text not yet sent
    last_sent: float = 0.0
    first_token_at: float | None = None
    checked_cancel: float = 0.0
    finish_reason: str = ""


class SlotCache:
    """Keys and values of every slot, allocated once; the decoder layers call ``update``."""

    def __init__(self, layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (slots, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_len = max_len
        self._rows = torch.arange(slots, device=device)
        self._positions = torch.zeros(slots, dtype=torch.long, device=device)
        self._batch = 0
        self._span = 0

    @staticmethod
    def bytes_needed(layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * slots * kv_heads * max_len * head_dim * torch.finfo(dtype).bits // 8

    def bind(self, positions: torch.Tensor, span: int) -> None:
        """The next ``update`` calls write one token per row at ``positions`` and read ``span`` tokens."""
        self._batch = positions.shape[0]
        self._positions[: self._batch].copy_(positions)
        self._span = span

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        rows, positions = self._rows[: self._batch], self._positions[: self._batch]
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[rows, :, positions] = key[:, :, 0]
        v[rows, :, positions] = value[:, :, 0]
        return k[: self._batch, :, : self._span], v[: self._batch, :, : self._span]

    def store(self, slot: int, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        n = key.shape[1]
        self.keys[layer][slot, :, :n] = key
        self.values[layer][slot, :, :n] = value

    def move(self, src: int, dst: int, length: int) -> None:
        for k, v in zip(self.keys, self.values):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, metrics: EngineMetrics | None = None):
        self.config = config
        self.model = loaded.model
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.device = loaded.device
        self.metrics = metrics or EngineMetrics()
        text_config = self.model.config.text_config
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        shape = dict(layers=text_config.num_hidden_layers, kv_heads=text_config.num_key_value_heads,
                     max_len=config.max_seq_len, dtype=loaded.dtype,
                     head_dim=getattr(text_config, "head_dim",
                                      text_config.hidden_size // text_config.num_attention_heads))
        self.slots = config.slots
        if config.kv_cache_budget_gib > 0:
            per_slot = SlotCache.bytes_needed(slots=1, **shape)
            self.slots = int(config.kv_cache_budget_gib * 2**30 // per_slot)
            if self.slots < 1:
                raise ValueError(f"kv_cache_budget_gib={config.kv_cache_budget_gib} holds no slot of "
                                 f"{config.max_seq_len} tokens ({per_slot / 2**30:.2f} GiB each)")
        self.cache = SlotCache(slots=self.slots, device=self.device, **shape)
        log.info("KV cache: %d slots x %d tokens, %.2f GiB", self.slots, config.max_seq_len,
                 SlotCache.bytes_needed(slots=self.slots, **shape) / 2**30)
        self._step = DecodeStep(self.model, self.cache,
                                compile=config.compile_decode and self.device.type == "cuda")
        self._span_step = 256 if self.device.type == "cuda" else 16
        self._arange = torch.arange(config.max_seq_len, device=self.device)
        # Static inputs of the decode step (graphs replay on these very tensors): token ids, rotary
        # positions and cache lengths, filled from one pinned host buffer with one copy per step.
        self._inputs = torch.zeros((3, self.slots), dtype=torch.long, device=self.device)
        self._staging = torch.zeros((3, self.slots), dtype=torch.long, pin_memory=self.device.type == "cuda")
        self._ids = self._inputs[0].view(self.slots, 1)
        self._positions, self._lengths = self._inputs[1], self._inputs[2]
        self.timings: dict[str, float] | None = None  # per-phase seconds, when a benchmark asks
        use_graphs = config.cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple] | None = {} if use_graphs else None
        self._graph_pool = None
        self._buckets = sorted({b for b in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if b < self.slots}
                               | {self.slots})
        self._free = threading.Semaphore(self.slots)
        self._lock = threading.Condition()
        self._incoming: deque[Sequence] = deque()
        self._waiting = 0  # callers blocked in submit() for a slot
        self._running: list[Sequence] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="qwen3vl-engine", daemon=True)
        self.metrics.slots(self.slots)
        self.metrics.in_flight(0)

    # -- the caller's side -------------------------------------------------------------

    def start(self) -> "Engine":
        if self._step.compiled:
            # Compile before the model reports ready: once for one sequence, once for any other count.
            with torch.inference_mode():
                for rows in (1, 2):
                    self._forward(rows, self._span_step)
        self._thread.start()
        return self

    def submit(self, request: GenerationRequest, prompt: Prompt, sink: ResponseSink,
               timeout: float | None = None) -> None:
        """Hand over one sequence; blocks while every slot is taken (that is the backpressure)."""
        if prompt.length + request.sampling.max_tokens > self.config.max_seq_len:
            raise _too_long(prompt.length, request.sampling.max_tokens, self.config.max_seq_len)
        with self._lock:
            self._waiting += 1
        self.metrics.waiting(self._waiting + len(self._incoming))
        try:
            if not self._free.acquire(timeout=timeout):
                raise Overloaded("the engine has no free slot; retry later")
        finally:
            with self._lock:
                self._waiting -= 1
        seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(62)
        sequence = Sequence(request=request, prompt=prompt, sink=sink,
                            text=TextStream(self.tokenizer, request.sampling.stop), seed=seed)
        with self._lock:
            if self._stopping:
                self._free.release()
                raise Overloaded("the model is shutting down")
            self._incoming.append(sequence)
            self._lock.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new sequences and let the admitted ones finish, waiting up to ``timeout`` seconds.

        Triton calls this when the model unloads, after its own exit timeout has let in-flight
        streams drain; whatever still runs after that is ended with the process.
        """
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout)

    @property
    def in_flight(self) -> int:
        return len(self._running) + len(self._incoming)

    # -- the engine thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._incoming and not self._running and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._running and not self._incoming:
                    return
                admitted = [self._incoming.popleft()
                            for _ in range(min(len(self._incoming), self.config.prefills_per_step))]
                waiting = self._waiting + len(self._incoming)
            if admitted:
                self.metrics.waiting(waiting)
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    if self._running:
                        self._decode()
            except Exception as exc:  # the model must survive a bad step: fail its sequences, go on
                log.exception("engine step failed")
                for sequence in admitted + list(self._running):
                    self._finish(sequence, error=EngineFailure(f"internal error in the engine: {exc}"))
            # Keep no finished sequence (and its response sender) alive while waiting for work.
            admitted = []

    def _prefill(self, batch: list[Sequence]) -> None:
        batch = [s for s in batch if not self._cancelled(s)]
        if not batch:
            return
        longest = max(s.prompt.length for s in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(batch), longest), dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, s in enumerate(batch):
            n = s.prompt.length
            ids[row, longest - n:] = s.prompt.input_ids
            types[row, longest - n:] = s.prompt.mm_token_type_ids
            mask[row, longest - n:] = 1
        pixels = [s.prompt.pixel_values for s in batch if s.prompt.pixel_values is not None]
        grids = [s.prompt.image_grid_thw for s in batch if s.prompt.image_grid_thw is not None]
        dev = self.device
        ids, types, mask = ids.to(dev), types.to(dev), mask.to(dev)
        grid = torch.cat(grids).to(dev) if grids else None
        positions, _ = self.model.model.get_rope_index(ids, types, grid, None, mask)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, mm_token_type_ids=types,
            pixel_values=torch.cat(pixels).to(dev, self.model.dtype) if pixels else None,
            image_grid_thw=grid, use_cache=True, logits_to_keep=1,
        )
        for row, s in enumerate(batch):
            s.slot = len(self._running)
            self._running.append(s)
            n = s.prompt.length
            for layer, cached in enumerate(out.past_key_values.layers):
                self.cache.store(s.slot, layer, cached.keys[row, :, longest - n:], cached.values[row, :, longest - n:])
            s.length = n
            s.position = int(positions[:, row, -1].max()) + 1
        self.metrics.prompt_tokens(sum(s.prompt.length for s in batch))
        self.metrics.in_flight(len(self._running))
        tokens = self._select(out.logits[:, -1], batch)
        self._advance(batch, tokens)

    def _decode(self) -> None:
        running = self._running
        n = len(running)
        span = min(self.cache.max_len, _round_up(max(s.length for s in running) + 1, self._span_step))
        rows = self._bucket(n) if self._graphs is not None else n
        started = time.perf_counter()
        staging = self._staging.numpy()
        staging[:, n:rows] = 0
        staging[0, :n] = [s.last_token for s in running]
        staging[1, :n] = [s.position for s in running]
        staging[2, :n] = [s.length for s in running]
        self._inputs[:, :rows].copy_(self._staging[:, :rows], non_blocking=True)
        launched = time.perf_counter()
        if self._graphs is None:
            logits = self._forward(rows, span)
        else:
            graph, logits = self._graphs.get((rows, span)) or self._capture(rows, span)
            graph.replay()
        tokens = self._select(logits[:n], running)
        done = time.perf_counter()
        for s in running:
            s.length += 1
            s.position += 1
        self.metrics.batch_size(n)
        self._advance(list(running), tokens)
        if self.timings is not None:
            for phase, seconds in (("prepare", launched - started), ("step", done - launched),
                                   ("stream", time.perf_counter() - done)):
                self.timings[phase] = self.timings.get(phase, 0.0) + seconds
            self.timings["steps"] = self.timings.get("steps", 0.0) + 1

    def _forward(self, rows: int, span: int) -> torch.Tensor:
        """One decode step over the first ``rows`` slots, reading ``span`` cached tokens: graph-capturable."""
        return self._step(self._ids[:rows], self._positions[:rows], self._lengths[:rows], span, self._arange)

    def _bucket(self, n: int) -> int:
        return next(b for b in self._buckets if b >= n)

    def _capture(self, rows: int, span: int):
        """Record the decode step for this (batch, span) shape once; later steps replay it."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up runs rewrite the same cache entries the real step writes
                self._forward(rows, span)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            logits = self._forward(rows, span)
        self._graph_pool = graph.pool()
        self._graphs[rows, span] = (graph, logits)
        log.info("captured decode step for %d sequences x %d tokens", rows, span)
        return graph, logits

    def _select(self, logits: torch.Tensor, batch: list[Sequence]) -> list[int]:
        params = [s.request.sampling for s in batch]
        any_sampling = any(not p.greedy for p in params)
        if not any_sampling:
            return torch.argmax(logits, dim=-1).tolist()
        dev = logits.device
        tokens = select(
            logits,
            temperature=torch.tensor([p.temperature for p in params], device=dev),
            top_p=torch.tensor([p.top_p for p in params], device=dev),
            seeds=torch.tensor([s.seed for s in batch], device=dev),
            steps=torch.tensor([s.generated for s in batch], device=dev),
            any_sampling=True,
            any_top_p=any(p.top_p < 1.0 for p in params),
        )
        return tokens.tolist()

    def _advance(self, batch: list[Sequence], tokens: list[int]) -> None:
        """Record one new token per sequence, stream it, and retire finished sequences."""
        now = time.monotonic()
        interval = self.config.stream_interval_ms / 1000.0
        self.metrics.generated_tokens(len(tokens))
        for s, token in zip(batch, tokens):
            s.generated += 1
            s.last_token = token
            if s.first_token_at is None:
                s.first_token_at = now
                self.metrics.time_to_first_token(now - s.arrival)
            sampling = s.request.sampling
            if token in self.eos_ids and not sampling.ignore_eos:
                s.finish_reason = FINISH_STOP
            else:
                s.pending += s.text.add(token)
                if s.text.stopped:
                    s.finish_reason = FINISH_STOP
                elif s.generated >= sampling.max_tokens:
                    s.finish_reason = FINISH_LENGTH
            # Asking Triton whether a client went away is a round trip: a few times a second is enough.
            if now - s.checked_cancel >= _CANCEL_CHECK_S or s.finish_reason:
                s.checked_cancel = now
                if self._cancelled(s):
                    continue
            if s.finish_reason:
                s.pending += s.text.flush()
                self._finish(s)
            elif s.request.stream and s.pending and now - s.last_sent >= interval:
                s.sink.send(self._chunk(s, s.pending), final=False)
                s.pending, s.last_sent = "", now

    def _chunk(self, s: Sequence, text: str) -> GenerationChunk:
        return GenerationChunk(text=text, prompt_tokens=s.prompt.length, completion_tokens=s.generated,
                               finish_reason=s.finish_reason)

    def _cancelled(self, s: Sequence) -> bool:
        if s.sink.is_cancelled():
            s.finish_reason = FINISH_CANCELLED
            self._finish(s, error=Cancelled("the request was cancelled"))
            return True
        return False

    def _finish(self, s: Sequence, error: ServingError | None = None) -> None:
        if s.slot == -2:
            return  # already retired
        try:
            if error is None:
                text = s.pending if s.request.stream else s.text.text
                s.sink.send(self._chunk(s, text), final=True)
            elif not isinstance(error, Cancelled):
                s.sink.fail(error)
            else:
                s.sink.send(self._chunk(s, ""), final=True)
        except Exception:  # a broken client connection must not stop the engine
            log.exception("sending the last response failed")
        self.metrics.finished("error" if error and not isinstance(error, Cancelled) else s.finish_reason)
        self._release(s)

    def _release(self, s: Sequence) -> None:
        if s.slot >= 0:
            last = self._running.pop()
            if last is not s:
                self.cache.move(last.slot, s.slot, last.length)
                last.slot = s.slot
                self._running[s.slot] = last
        s.slot = -2
        self._free.release()
        self.metrics.in_flight(len(self._running))


def _round_up(n: int, step: int) -> int:
    return (n + step - 1) // step * step


def _too_long(prompt: int, max_tokens: int, limit: int) -> ServingError:
    from .errors import LimitExceeded

    return LimitExceeded(
        f"invalid request: the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) "
        f"exceeds the context of {limit} tokens"
    )


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
