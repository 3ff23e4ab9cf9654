"""The generation engine: continuous batching over a preallocated, slot-based KV cache.

One background thread owns the model. Each iteration it
1. admits up to ``prefills_per_step`` waiting sequences: one batched prefill
   (vision encoder and prompts, packed end to end) through the checkpoint's own vision
   blocks and decoder layers, whose keys and values are copied into the
   sequences' cache slots;
2. launches one decode step for every running sequence, through the checkpoint's
   own decoder layers, reading and writing the slot cache in place; the sampled
   tokens stay on the device as the next step's input;
3. while the device runs that step, streams the tokens of the step before, and
   frees the slots of finished or cancelled sequences (a sequence that ended on
   EOS or a stop string has one token too many computed, which is dropped).

A new request therefore waits at most one decode step (plus its own prefill),
never for another request's whole answer. Capacity is the number of slots:
``submit`` blocks while they are all taken, which keeps waiting requests in
Triton's own queue (backpressure) where its queue metrics and queue policy see them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .compile_artifacts import CompileArtifacts
from .config import EngineConfig
from .decode import Decoder
from .decoding import TextStream
from .errors import Cancelled, EngineFailure, Overloaded, ServingError
from .loader import LoadedModel
from .metrics import EngineMetrics
from .prompt import Prompt
from .request import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, GenerationChunk, GenerationRequest
from .sampling import select
from .vision import VisionEncoder

log = logging.getLogger(__name__)

class ResponseSink(Protocol):
    """Where a sequence's responses go (a Triton response sender, or a list in tests)."""

    def send(self, chunk: GenerationChunk, final: bool) -> None: ...
    def fail(self, error: ServingError) -> None: ...
    def is_cancelled(self) -> bool:
        """Read every step: must not wait on the client (Triton's sink reads a flag a watcher keeps)."""
        ...
    def busy(self) -> bool:
        """True while an earlier response is still on its way to the client."""
        ...


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
    scheduled: int = 0  # tokens launched on the device (the host has seen ``generated`` of them)
    generated: int = 0
    pending: str = ""  # text not yet sent
    last_sent: float = 0.0
    first_token_at: float | None = None
    finish_reason: str = ""
    finished: bool = False


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

    def store(self, layers, slots: list[int], lengths: list[int], upload) -> None:
        """Copy a prefill's keys and values (``layers``: per layer, (tokens, heads, dim) each, the prompts
        end to end) into the slots: prompt i's ``lengths[i]`` tokens become the first of ``slots[i]``.

        One scatter per layer and tensor, whatever the number of prompts. The indices go up in one
        copy through ``upload`` (the engine's, from page-locked memory: a copy from pageable memory
        can make the host wait for the device)."""
        dst_slots = torch.repeat_interleave(torch.tensor(slots), torch.tensor(lengths))
        dst = torch.cat([torch.arange(n) for n in lengths])
        dst_slots, dst = upload(torch.stack([dst_slots, dst]))
        for layer, (key, value) in enumerate(layers):
            self.keys[layer][dst_slots, :, dst] = key
            self.values[layer][dst_slots, :, dst] = value

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
        cuda = self.device.type == "cuda"
        self._decoder = Decoder(self.model, self.cache, compile=config.compile_decode and cuda,
                                exact_attention=config.exact_attention and cuda)
        self._vision = VisionEncoder(self.model.model.visual, compile=config.compile_decode and cuda)
        self._image_token = self.model.config.image_token_id
        # SDPA reads a span of the cache rounded up (a captured graph serves many steps); the
        # exact kernel reads each row's length, so one graph per batch size serves every step.
        self._span_step = config.max_seq_len if self._decoder.exact_attention else 256 if cuda else 16
        self._arange = torch.arange(config.max_seq_len, device=self.device)
        # Static inputs of the decode step (graphs replay on these very tensors): token ids (written
        # on the device by the step before), rotary positions and cache lengths (copied from the host).
        self._inputs = torch.zeros((3, self.slots), dtype=torch.long, device=self.device)
        self._ids = self._inputs[0].view(self.slots, 1)
        self._positions, self._lengths = self._inputs[1], self._inputs[2]
        self.timings: dict[str, float] | None = None  # per-phase seconds, when a benchmark asks
        self.start_timings: dict[str, float] = {}
        self.compile_artifacts: CompileArtifacts | None = None
        use_graphs = config.cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple] | None = {} if use_graphs else None
        self._graph_pool = None
        # On a GPU only captured steps run during a prefill (an eager one costs the host what the
        # prefill's layers do); on a CPU they simply take turns with the prefill's layers.
        self._overlap = config.decode_during_prefill and (use_graphs or self.device.type != "cuda")
        self._buckets = sorted({b for b in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if b < self.slots}
                               | {self.slots})
        self._free = threading.Semaphore(self.slots)
        self._lock = threading.Condition()
        self._incoming: deque[Sequence] = deque()
        self._arriving = 0  # requests handed to the model and not yet submitted (parsed, prompts being built)
        self._waiting = 0  # callers blocked in submit() for a slot
        self._admitted = 0  # sequences handed over and not yet finished
        self._running: list[Sequence] = []  # the next decode step's batch; row i is slot i
        self._pending: deque[_Output] = deque()  # launched, not yet streamed (oldest first)
        self._last_step_at: float | None = None  # when the last decode step's tokens reached the host
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="qwen3vl-engine", daemon=True)
        self.metrics.max_sequences(self.slots)
        self.metrics.in_flight(0)

    # -- the caller's side -------------------------------------------------------------

    def start(self) -> "Engine":
        """Compile (with ``compile_decode``) before the model reports ready, then start the engine thread.

        Seconds per warm-up land in ``start_timings``: the ready log line reports them, since they are
        most of a start with warm caches.
        """
        artifacts = self.compile_artifacts = self._compile_artifacts()
        reused = artifacts is not None and artifacts.load()
        if self._decoder.compiled:
            # The decode step once for one sequence and once for any other count (and, with exact
            # attention, for many: its kernels' other launch shape), then the vision blocks. A prefill
            # passes its tokens as rows of one token and so reuses the step's graphs; its warm-up runs
            # its own kernels once. Samples have sizes the model has nowhere else (2 rows, three
            # prompts of 37 tokens, 36 patches): torch.compile takes sizes equal at tracing to stay
            # equal, and a real prompt would then compile again, for seconds.
            with torch.inference_mode():
                with self._warming_up("decode"):
                    for rows in self._decoder.warm_up_rows:
                        if rows <= self.slots:
                            self._forward(rows, self._span_step)
                with self._warming_up("prefill"):
                    bounds, width = [0, 37, 74, 111], self.model.config.text_config.hidden_size
                    embeds = torch.zeros((bounds[-1], width), dtype=self.cache.keys[0].dtype, device=self.device)
                    positions = torch.arange(37, device=self.device).repeat(3).expand(3, -1)
                    segments = torch.tensor(bounds, dtype=torch.int32, device=self.device)
                    self._decoder.prefill(embeds, positions, bounds, segments)
                with self._warming_up("vision"):
                    self._vision.warm_up(self.device)
        if artifacts is not None and not reused:
            artifacts.save(self._decoder.kernels)
        self._thread.start()
        return self

    def _compile_artifacts(self) -> CompileArtifacts | None:
        if not (self._decoder.compiled and self.config.compile_artifacts_dir):
            return None
        return CompileArtifacts.for_engine(self.config.compile_artifacts_dir, self.device, {
            "model": self.model.config.to_dict(), "dtype": self.cache.keys[0].dtype,
            "max_seq_len": self.config.max_seq_len, "exact_attention": self._decoder.exact_attention})

    @contextlib.contextmanager
    def _warming_up(self, name: str):
        """Times one warm-up into ``start_timings``, until the device has run what it launched."""
        began = time.monotonic()
        yield
        torch.cuda.synchronize(self.device)
        self.start_timings[name] = time.monotonic() - began

    def arrived(self, n: int) -> None:
        """``n`` requests reached the model (a dynamic batch): they count as waiting from now on, while
        they are parsed and their prompts built, until each is submitted or ``dropped``."""
        with self._lock:
            self._arriving += n
            waiting = self._arriving + self._waiting + len(self._incoming)
        self.metrics.waiting(waiting)

    def dropped(self, n: int = 1) -> None:
        """Requests announced by ``arrived`` that were refused before ``submit``."""
        self.arrived(-n)

    def submit(self, request: GenerationRequest, prompt: Prompt, sink: ResponseSink,
               timeout: float | None = None, arrival: float | None = None, announced: bool = False) -> None:
        """Hand over one sequence; blocks while every slot is taken (that is the backpressure).
        ``arrival``: when the request reached the model; ``announced``: counted by ``arrived``."""
        with self._lock:
            self._arriving -= announced
            self._waiting += 1
            waiting = self._arriving + self._waiting + len(self._incoming)
        self.metrics.waiting(waiting)
        if prompt.length + request.sampling.max_tokens > self.config.max_seq_len:
            with self._lock:
                self._waiting -= 1
            self.metrics.waiting(self._arriving + self._waiting + len(self._incoming))
            raise _too_long(prompt.length, request.sampling.max_tokens, self.config.max_seq_len)
        try:
            if not self._free.acquire(timeout=timeout):
                raise Overloaded("the engine has no free slot; retry later")
        finally:
            with self._lock:
                self._waiting -= 1
        seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(62)
        sequence = Sequence(request=request, prompt=prompt, sink=sink,
                            text=TextStream(self.tokenizer, request.sampling.stop), seed=seed)
        if arrival is not None:
            sequence.arrival = arrival
        with self._lock:
            if self._stopping:
                self._free.release()
                raise Overloaded("the model is shutting down")
            self._incoming.append(sequence)
            self._admitted += 1
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
        return self._admitted

    # -- the engine thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._incoming and not self._running and not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._running and not self._incoming and not self._pending:
                    return
                admitted = [self._incoming.popleft()
                            for _ in range(min(len(self._incoming), self.config.prefills_per_step))]
                waiting = self._arriving + self._waiting + len(self._incoming)
            if admitted:
                self.metrics.waiting(waiting)
                now = time.monotonic()
                for sequence in admitted:
                    self.metrics.queued(now - sequence.arrival)
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    launched = self._launch() if self._running else False
                    # The step just launched runs while the host streams the one before it.
                    while len(self._pending) > (1 if launched else 0):
                        self._collect(self._pending.popleft())
                if not self._running:  # no stream waits for a next token until one runs again
                    self._last_step_at = None
            except Exception as exc:  # the model must survive a bad step: fail its sequences, go on
                log.exception("engine step failed")
                failed = admitted + list(self._running) + [s for out in self._pending for s in out.batch]
                self._pending.clear()
                for sequence in failed:
                    self._finish(sequence, error=EngineFailure(f"internal error in the engine: {exc}"))
            # Keep no finished sequence (and its response sender) alive while waiting for work.
            admitted = []

    def _prefill(self, batch: list[Sequence]) -> None:
        batch = [s for s in batch if not self._cancelled(s)]
        if not batch:
            return
        # The prompts go end to end, without padding: a short prompt beside a long one costs its own
        # tokens, not the long one's.
        bounds = [0, *itertools.accumulate(s.prompt.length for s in batch)]
        ids = torch.cat([s.prompt.input_ids for s in batch])
        pixels = [s.prompt.pixel_values for s in batch if s.prompt.pixel_values is not None]
        grids = [s.prompt.image_grid_thw for s in batch if s.prompt.image_grid_thw is not None]
        # Rotary positions on the host, prompt by prompt: they are a function of the prompt alone, and
        # computing them here leaves the decode step that is still running on the device undisturbed.
        positions = [self.model.model.get_rope_index(s.prompt.input_ids[None], s.prompt.mm_token_type_ids[None],
                                                     s.prompt.image_grid_thw)[0][:, 0] for s in batch]
        dev = self.device

        def upload(t: torch.Tensor) -> torch.Tensor:
            return self._pinned(t).to(dev, non_blocking=True)

        between = self._keep_decoding if self._overlap and self._running else None
        embeds = self.model.model.get_input_embeddings()(upload(ids))
        visual, deepstack = None, []
        if pixels:
            layout = self._vision.layout(torch.cat(grids), upload)
            # Each prompt's pixels are copied up on their own and joined there (no copy of them all on the host).
            features, deepstack = self._vision(torch.cat([upload(p) for p in pixels]), layout, between)
            visual = upload((ids == self._image_token).nonzero().squeeze(1))
            embeds.index_copy_(0, visual, features.to(embeds.dtype))
        logits, layers = self._decoder.prefill(embeds, upload(torch.cat(positions, dim=1)), bounds,
                                               upload(torch.tensor(bounds, dtype=torch.int32)), visual, deepstack,
                                               between)
        for s, p in zip(batch, positions):
            s.slot = len(self._running)
            self._running.append(s)
            s.length = s.prompt.length
            s.position = int(p[:, -1].max()) + 1
        self.cache.store(layers, [s.slot for s in batch], [s.length for s in batch], upload)
        self.metrics.prompt_tokens(sum(s.prompt.length for s in batch))
        self.metrics.prefill_size(len(batch))
        self.metrics.in_flight(len(self._running))
        tokens = self._select(logits, batch)
        self._ids.index_copy_(0, upload(torch.tensor([s.slot for s in batch])), tokens.view(-1, 1))
        self._pending.append(_Output.of(batch, tokens, decode=False))

    def _keep_decoding(self) -> None:
        """Between a prefill's layers: stream the decode steps the device has run, and once it has run
        them all, launch the next. On a GPU a prefill of a few prompts is host-bound (an image prompt:
        ~50 ms of launches for ~9 ms of work), and without this every running stream waits it out.
        Sequences that finish here give up their slots as usual; the prefill's own take theirs at its end."""
        while self._pending and self._pending[0].done():
            self._collect(self._pending.popleft())
        if self._running and not self._pending:
            self._launch(capture=False)

    def _launch(self, capture: bool = True) -> bool:
        """Enqueue one decode step for every running sequence, without waiting for the device.

        The step reads its token ids from the device, where the previous step or the prefill left
        them, and writes its own there for the next step: the host only sees tokens when it
        collects them, one step behind. ``capture``: False launches only a step already captured.
        """
        # A sequence whose last token is already scheduled takes no further step.
        for s in [s for s in self._running if s.scheduled >= s.request.sampling.max_tokens]:
            self._retire(s)
        running = self._running
        n = len(running)
        if not n:
            return False
        span = min(self.cache.max_len, _round_up(max(s.length for s in running) + 1, self._span_step))
        rows = self._bucket(n) if self._graphs is not None else n
        if not capture and self._graphs is not None and (rows, span) not in self._graphs:
            return False
        started = time.perf_counter()
        host = torch.zeros((2, rows), dtype=torch.long)
        host[0, :n] = torch.tensor([s.position for s in running])
        host[1, :n] = torch.tensor([s.length for s in running])
        self._inputs[1:, :rows].copy_(self._pinned(host), non_blocking=True)
        captured = None if self._graphs is None else self._graphs.get((rows, span)) or self._capture(rows, span)
        if captured is None:
            logits = self._forward(rows, span)
        else:
            graph, logits = captured
            graph.replay()
        batch = list(running)
        tokens = self._select(logits[:n], batch)
        self._ids[:n, 0].copy_(tokens)
        self._pending.append(_Output.of(batch, tokens, decode=True))
        for s in batch:
            s.length += 1
            s.position += 1
        self.metrics.batch_size(n)
        self._time(launch=time.perf_counter() - started, steps=1)
        return True

    def _collect(self, output: "_Output") -> None:
        """Wait for one launched step's tokens and stream them."""
        started = time.perf_counter()
        tokens = output.tokens()
        collected = time.perf_counter()
        if output.decode:
            if self._last_step_at is not None:
                self.metrics.inter_token(collected - self._last_step_at)
            self._last_step_at = collected
        live = [(s, t) for s, t in zip(output.batch, tokens) if not s.finished]
        self._advance([s for s, _ in live], [t for _, t in live])
        self._time(wait=collected - started, stream=time.perf_counter() - collected)

    def _time(self, **phases: float) -> None:
        """Add to the per-phase totals a benchmark reads (nothing unless it asked)."""
        if self.timings is not None:
            for phase, amount in phases.items():
                self.timings[phase] = self.timings.get(phase, 0.0) + amount

    def _forward(self, rows: int, span: int) -> torch.Tensor:
        """One decode step over the first ``rows`` slots, reading ``span`` cached tokens: graph-capturable."""
        return self._decoder.step(self._ids[:rows], self._positions[:rows], self._lengths[:rows], span, self._arange)

    def _bucket(self, n: int) -> int:
        return next(b for b in self._buckets if b >= n)

    def _capture(self, rows: int, span: int):
        """Record the decode step for this (batch, span) shape once; later steps replay it.

        A capture that fails leaves the allocator's graph pool unusable for the next one, so the engine
        goes on without graphs (slower steps, the same tokens) instead of failing every later step."""
        try:
            return self._record(rows, span)
        except Exception:
            log.exception("capturing the decode step for %d sequences x %d tokens failed: decode steps run "
                          "without CUDA graphs from now on", rows, span)
            self._graphs = None
            self._overlap = False  # an eager step costs the host what a prefill's layers do
            return None

    def _record(self, rows: int, span: int):
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

    def _select(self, logits: torch.Tensor, batch: list[Sequence]) -> torch.Tensor:
        """The next token of each row, on the device; counts each sequence's scheduled tokens."""
        params = [s.request.sampling for s in batch]
        steps = [s.scheduled for s in batch]
        for s in batch:
            s.scheduled += 1
        if all(p.greedy for p in params):
            return torch.argmax(logits, dim=-1)
        dev = logits.device
        floats = self._pinned(torch.tensor([[p.temperature for p in params], [p.top_p for p in params]]))
        longs = self._pinned(torch.tensor([[s.seed for s in batch], steps], dtype=torch.long))
        floats, longs = floats.to(dev, non_blocking=True), longs.to(dev, non_blocking=True)
        return select(logits, temperature=floats[0], top_p=floats[1], seeds=longs[0], steps=longs[1],
                      any_sampling=True, any_top_p=any(p.top_p < 1.0 for p in params))

    def _pinned(self, tensor: torch.Tensor) -> torch.Tensor:
        """Page-locked for a GPU, so that copying it there does not wait for the steps queued before."""
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    def _advance(self, batch: list[Sequence], tokens: list[int]) -> None:
        """Record one new token per sequence, stream it, and retire finished sequences."""
        now = time.monotonic()
        interval = self.config.stream_interval_ms / 1000.0
        self.metrics.generated_tokens(len(tokens))
        for s, token in zip(batch, tokens):
            s.generated += 1
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
            if self._cancelled(s):
                continue
            if s.finish_reason:
                s.pending += s.text.flush()
                self._finish(s)
            # While the previous delta is still on its way, text accumulates: a slow connection
            # (or a response path saturated by many streams) gets fewer, larger deltas, never a backlog.
            elif s.request.stream and s.pending and now - s.last_sent >= interval and not s.sink.busy():
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
        if s.finished:
            return
        s.finished = True
        # Counted before the slot shows free, so whoever sees the slot free sees the count too.
        self.metrics.finished("error" if error and not isinstance(error, Cancelled) else s.finish_reason)
        self._retire(s)
        with self._lock:
            self._admitted -= 1
        self._free.release()
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

    def _retire(self, s: Sequence) -> None:
        """Take a sequence out of the decode batch; the last slot moves into its place (on the device,
        after every step already launched), so running sequences always fill the first slots."""
        if s.slot < 0:
            return
        last = self._running.pop()
        if last is not s:
            self.cache.move(last.slot, s.slot, last.length)
            self._ids[s.slot] = self._ids[last.slot]
            last.slot = s.slot
            self._running[s.slot] = last
        s.slot = -1
        self.metrics.in_flight(len(self._running))


@dataclass(eq=False)
class _Output:
    """The tokens of one launched step (prefill or decode), on their way to the host."""

    batch: list[Sequence]
    host: torch.Tensor
    ready: "torch.cuda.Event | None"
    decode: bool  # a decode step's (every running sequence's next token), not a prefill's

    @classmethod
    def of(cls, batch: list[Sequence], tokens: torch.Tensor, decode: bool) -> "_Output":
        if tokens.device.type != "cuda":
            return cls(batch, tokens, None, decode)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(batch, host, ready, decode)

    def done(self) -> bool:
        return self.ready is None or self.ready.query()

    def tokens(self) -> list[int]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.tolist()


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
