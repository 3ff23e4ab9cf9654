"""Runs a step's plan on the device: prompt chunks through the vision encoder and decoder layers, decode
steps as captured CUDA graphs, and token selection.

Nothing here waits for the device. A step's sampled tokens stay on the device (in the
last-token buffer, one entry per slot) as the next step's input, and reach the host
through ``Launched``, one step behind. The runner sizes the KV cache from the memory it
is given and owns it; the block tables on the device follow the scheduler's block
lists, uploaded as they grow.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from .compile_artifacts import CompileArtifacts
from .config import EngineConfig
from .decode import Context, Decoder
from .kv_cache import PagedKVCache
from .loader import LoadedModel
from .prompt import VisualSpan
from .sampling import select
from .scheduler import Chunk, DecodeRows
from .sequence import Sequence
from .vision import Encoded, VisionEncoder
from .visual_cache import VisualCache

log = logging.getLogger(__name__)

# A prefill whose chunks' tokens times the context each reads come to at least PACE_WORK (a long prompt's
# first chunk of 2,048, or 1,024 tokens ending 4,096 deep) is paced while sequences decode beside it
# (``pace``), its layers enqueued at most PACE_AHEAD ahead of the device. Unpaced, that first chunk alone
# held 64 streams for 26-36 ms on an H200 (their step: 4.7 ms).
PACE_WORK, PACE_AHEAD = 2048 * 2048, 1
GRAPH_RESERVE_BYTES = 1 << 30  # captured decode graphs and their pool (as much again for the prefill's)


def device_bound(chunks: list[Chunk]) -> bool:
    """Whether a prefill is large enough (``PACE_WORK``) that the device takes longer over its layers
    than the host does to enqueue them: then it is worth pacing. Many short prompts packed together
    stay host-bound, however many tokens they add up to."""
    return sum((c.end - c.start) * c.end for c in chunks) >= PACE_WORK


@dataclass(eq=False)
class Launched:
    """The tokens of one launched step (prefill or decode), on their way to the host."""

    batch: list[Sequence]
    host: torch.Tensor
    ready: "torch.cuda.Event | None"
    decode: bool  # a decode step's (every running sequence's next token), not a prefill's
    began: "torch.cuda.Event | None" = None  # recorded before its first kernel, when it is timed

    @classmethod
    def of(cls, batch: list[Sequence], tokens: torch.Tensor, decode: bool,
           began: "torch.cuda.Event | None" = None) -> "Launched":
        for s in batch:
            s.in_flight += 1
        if tokens.device.type != "cuda":
            return cls(batch, tokens, None, decode)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event(enable_timing=began is not None)
        ready.record()
        return cls(batch, host, ready, decode, began)

    def done(self) -> bool:
        return self.ready is None or self.ready.query()

    def device_seconds(self) -> float | None:
        """How long the device took to run it (once ``done``), when it was timed."""
        return None if self.began is None else self.began.elapsed_time(self.ready) / 1000

    def tokens(self) -> list[int]:
        if self.ready is not None:
            self.ready.synchronize()
        for s in self.batch:
            s.in_flight -= 1
        return self.host.tolist()


class ModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.config = config
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        cuda = self.device.type == "cuda"
        text = self.model.config.text_config
        self.layers = text.num_hidden_layers
        self.kv_heads = text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
        self.decoder = Decoder(self.model, compile=config.compile_decode and cuda,
                               exact_attention=config.exact_attention and cuda)
        if self.decoder.exact_attention:
            from .attention import check_block_size

            check_block_size(config.block_size)
        self.vision = VisionEncoder(self.model.model.visual, compile=config.compile_decode and cuda)
        self.encoded: VisualCache[Encoded] = VisualCache(int(config.encoder_cache_gib * 2**30))
        self.visuals_encoded = self.visuals_from_cache = 0  # counters: images and temporal patches
        self._image_token = self.model.config.image_token_id
        self._merge = self.model.config.vision_config.spatial_merge_size
        self._prefill_graphs = config.cuda_graphs and config.prefill_graph_tokens > 0
        self._embed = self.model.model.get_input_embeddings()
        # SDPA reads a span of cached tokens rounded up (a captured graph serves many steps); the exact
        # kernel reads each row's length, so one graph per batch size serves every step.
        step = config.max_model_len if self.decoder.exact_attention else 256 if cuda else 16
        self._span_step = -(-max(step, config.block_size) // config.block_size) * config.block_size
        self.max_seqs = config.max_num_seqs
        self.dummy_slot = config.max_num_seqs  # padding rows of a captured step write here: a block of its own
        # Static inputs of the decode step (graphs replay on these very tensors), copied from the host:
        # each row's slot, rotary position and cached length.
        self._inputs = torch.zeros((3, self.max_seqs + 1), dtype=torch.long, device=self.device)
        self._slots, self._positions, self._lengths = self._inputs
        self._last_tokens = torch.zeros(self.max_seqs + 1, dtype=torch.long, device=self.device)
        self.cache: PagedKVCache | None = None
        self._synced: dict[int, tuple[list[int], int]] = {}  # slot -> (block list uploaded, entries uploaded)
        use_graphs = config.cuda_graphs and cuda
        self.graphs: dict[tuple[int, int], tuple] | None = {} if use_graphs else None
        self._graph_pool = None
        self._paced: collections.deque = collections.deque()  # events of the launches ``pace`` keeps up with
        self._pacing = False  # whether the prefill being launched is paced
        # Decode steps are timed on the device only where pacing reads their time.
        self._time_steps = cuda and config.decode_during_prefill and config.decode_gap_during_prefill > 0
        self._buckets = sorted({b for b in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
                                if b < self.max_seqs} | {self.max_seqs})
        self.start_timings: dict[str, float] = {}
        self.compile_artifacts: CompileArtifacts | None = None

    # -- start -------------------------------------------------------------------------

    def start(self) -> int:
        """Compile (with ``compile_decode``), size and allocate the KV cache; return its blocks."""
        artifacts = self.compile_artifacts = self._compile_artifacts()
        reused = artifacts is not None and artifacts.load()
        # A cache of a few blocks serves the warm-ups and the memory profile (their writes all land in
        # its first block): the real one is sized from the peak they reach.
        self._bind(PagedKVCache(self.layers, 2, self.config.block_size, self.kv_heads, self.head_dim, self.dtype,
                                self.device, self.max_seqs + 1, self.config.max_model_len))
        with torch.inference_mode():
            if self.decoder.compiled:
                self._warm_up()
            if self.device.type == "cuda":
                with self._timed("profile"):
                    self._profile_peak()
        num_blocks = self._num_blocks()
        if num_blocks < -(-self.config.max_model_len // self.config.block_size):
            raise ValueError(
                f"a KV cache of {num_blocks} blocks ({num_blocks * self.config.block_size} tokens) cannot hold one "
                f"sequence of max_model_len={self.config.max_model_len} tokens: lower max_model_len or give the "
                f"engine more memory (kv_cache_budget_gib, gpu_memory_utilization)")
        self._bind(PagedKVCache(self.layers, num_blocks + 1, self.config.block_size, self.kv_heads, self.head_dim,
                                self.dtype, self.device, self.max_seqs + 1, self.config.max_model_len))
        self.cache.tables[self.dummy_slot] = num_blocks  # the block no sequence is given
        if self._prefill_graphs:
            cuda = self.device.type == "cuda"
            tokens = min(self.config.prefill_graph_tokens, self.config.max_num_batched_tokens)
            try:
                # Their static buffers are made in inference mode, as every tensor the warm-up gave the
                # compiled regions was: other tensors fail the compiled code's guard on dispatch keys, and
                # each region would compile once more.
                with torch.inference_mode(), self._timed("prefill graphs"):
                    decoder = self.decoder.graph_prefills(tokens, num_blocks * self.config.block_size, capture=cuda)
                    # An image token stands for merge x merge patches; an image is encoded whole when a chunk
                    # first reaches it, so its patches are not bounded by the step's token budget.
                    vision = self.vision.graph_blocks(self.config.prefill_graph_tokens * self._merge ** 2,
                                                      capture=cuda)
                    vision.capture_all(decoder.capture_all())
            except Exception:
                log.exception("capturing the prefill's graphs failed: prefills run without them")
                self.decoder.prefill_graphs = self.vision.graphs = None
        if self.graphs is not None and self.decoder.exact_attention:
            with torch.inference_mode(), self._timed("decode graphs"):
                self._capture_decode_steps()
        if artifacts is not None and not reused:
            artifacts.save(self.decoder.kernels)
        return num_blocks

    def _capture_decode_steps(self) -> None:
        """The decode step of every batch bucket, captured before the first request, as vLLM does.
        Captured on first use instead, the first step at a new batch size (64 streams and a prompt
        arriving: bucket 96) waits for its capture with every stream in it, and until then no decode step
        goes in between a prefill's layers. With the exact kernel one span serves every length: one graph
        per bucket. Their rows are padding rows (the dummy slot, nothing cached)."""
        self._inputs.zero_()
        self._slots.fill_(self.dummy_slot)
        span = min(self._round_span(1), self.cache.tables.shape[1] * self.config.block_size)
        for rows in self._buckets:
            if (rows, span) not in self.graphs and self._capture(rows, span) is None:
                return

    def _bind(self, cache: PagedKVCache) -> None:
        self.cache = self.decoder.cache = cache
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._synced.clear()

    def _num_blocks(self) -> int:
        per_block = PagedKVCache.bytes_per_block(self.layers, self.config.block_size, self.kv_heads, self.head_dim,
                                                 self.dtype)
        if self.config.kv_cache_budget_gib > 0:
            budget = int(self.config.kv_cache_budget_gib * 2**30)
        elif self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(index)
            capped = total * torch.cuda.get_per_process_memory_fraction(index)
            # Everything on the device that torch's allocator does not hold (the CUDA context, other
            # processes) stays where it is; the engine may use its share of what is left.
            outside = total - free - torch.cuda.memory_reserved(self.device)
            usable = min(self.config.gpu_memory_utilization * total, capped) - outside
            reserve = GRAPH_RESERVE_BYTES * (2 if self._prefill_graphs else 1) + self.encoded.budget
            budget = int(usable - torch.cuda.max_memory_allocated(self.device) - reserve)
            log.info("KV cache budget: %.2f GiB of %.1f GiB (peak of weights and activations %.2f GiB, "
                     "outside torch %.2f GiB)", budget / 2**30, total / 2**30,
                     torch.cuda.max_memory_allocated(self.device) / 2**30, outside / 2**30)
        else:
            return self.config.max_num_seqs * -(-self.config.max_model_len // self.config.block_size)
        return max(0, budget // per_block)

    def _profile_peak(self) -> None:
        """The largest prefill a step may run (max_num_batched_tokens tokens, with as many image tokens
        as the largest image allows), so that the KV cache leaves room for its activations."""
        torch.cuda.reset_peak_memory_stats(self.device)
        tokens = self.config.max_num_batched_tokens
        bounds = [0, tokens]
        embeds = torch.zeros((tokens, self.model.config.text_config.hidden_size), dtype=self.dtype,
                             device=self.device)
        positions = torch.arange(tokens, device=self.device).expand(3, -1)
        segments = torch.tensor(bounds, dtype=torch.int32, device=self.device)
        self.decoder.prefill(embeds, positions, bounds, segments, torch.zeros(tokens, dtype=torch.long,
                             device=self.device), last=torch.tensor([tokens - 1], device=self.device))
        vision = self.model.config.vision_config
        pixels = self.config.image_max_pixels or self.config.limits.max_image_pixels
        merge = vision.spatial_merge_size
        side = max(1, int(pixels ** 0.5) // vision.patch_size // merge) * merge
        grid = torch.tensor([[1, side, side]])
        self.vision(torch.zeros((side * side, self.vision.patch_w.shape[1]), dtype=self.dtype, device=self.device),
                    self.vision.layout(grid, lambda t: t.to(self.device)))
        torch.cuda.synchronize(self.device)

    def _warm_up(self) -> None:
        """The decode step once for one sequence and once for any other count (and, with exact
        attention, for many: its kernels' other launch shape), then the vision blocks. A prefill passes
        its tokens as rows of one token and so reuses the step's graphs; its warm-up runs its own
        kernels once. Samples have sizes the model has nowhere else (2 rows, three prompts of 37
        tokens, 36 patches): torch.compile takes sizes equal at tracing to stay equal, and a real
        prompt would then compile again, for seconds."""
        with self._timed("decode"):
            for rows in self.decoder.warm_up_rows:
                if rows <= self.max_seqs:
                    self._forward(rows, self._span_step)
        with self._timed("prefill"):
            bounds, width = [0, 37, 74, 111], self.model.config.text_config.hidden_size
            embeds = torch.zeros((bounds[-1], width), dtype=self.dtype, device=self.device)
            positions = torch.arange(37, device=self.device).repeat(3).expand(3, -1)
            segments = torch.tensor(bounds, dtype=torch.int32, device=self.device)
            written = torch.zeros(bounds[-1], dtype=torch.long, device=self.device)
            self.decoder.prefill(embeds, positions, bounds, segments, written)
        with self._timed("vision"):
            self.vision.warm_up(self.device)

    def _compile_artifacts(self) -> CompileArtifacts | None:
        if not (self.decoder.compiled and self.config.compile_artifacts_dir):
            return None
        return CompileArtifacts.for_engine(self.config.compile_artifacts_dir, self.device, {
            "model": self.model.config.to_dict(), "dtype": self.dtype, "block_size": self.config.block_size,
            "max_model_len": self.config.max_model_len, "exact_attention": self.decoder.exact_attention})

    @contextlib.contextmanager
    def _timed(self, name: str):
        """Times one warm-up into ``start_timings``, until the device has run what it launched."""
        began = time.monotonic()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start_timings[name] = time.monotonic() - began

    # -- a step ------------------------------------------------------------------------

    def prefill(self, chunks: list[Chunk], between=None) -> Launched | None:
        """Launch prompt chunks packed end to end (each reads its sequence's earlier tokens from the
        cache) and select the next token of every prompt whose last chunk this is."""
        seqs = [c.seq for c in chunks]
        self._paced.clear()
        self._pacing = self.device.type == "cuda" and device_bound(chunks)
        self._sync_tables(seqs)
        bounds = [0, *itertools.accumulate(c.end - c.start for c in chunks)]
        ids = torch.tensor(list(itertools.chain.from_iterable(c.seq.tokens[c.start:c.end] for c in chunks)))
        positions = torch.cat([c.seq.positions(c.start, c.end) for c in chunks], dim=1)
        written = np.concatenate([self._flat(c.seq.blocks, c.start, c.end) for c in chunks])
        last = [bounds[i + 1] - 1 for i, c in enumerate(chunks) if c.last]
        embeds = self._embed(self._upload(ids))
        visual, deepstack = self._visuals(chunks, bounds, embeds, between)
        context = self._context(chunks) if any(c.start for c in chunks) else None
        logits = self.decoder.prefill(
            embeds, self._upload(positions), bounds, self._upload(torch.tensor(bounds, dtype=torch.int32)),
            self._upload(torch.from_numpy(written)), context, self._upload(torch.tensor(last)) if last else None,
            visual, deepstack, between)
        done = [c.seq for c in chunks if c.last]
        if not done:
            return None
        tokens = self._select(logits, done)
        self._last_tokens.index_copy_(0, self._upload(torch.tensor([s.slot for s in done])), tokens)
        return Launched.of(done, tokens, decode=False)

    def pace(self) -> bool:
        """Called after each layer of a prefill is enqueued: for a large chunk deep in a long prompt, wait
        until the device has run all but the last ``PACE_AHEAD`` layers, and say so. Enqueueing such a
        chunk takes the host a fraction of the device's time (~75 ms for 1,024 tokens after 32K on an
        H200), so unpaced it queues every layer before the decode step beside it is done, and the next
        one can only go in after the whole chunk. Lighter prefills (a few short prompts, a chat's next
        turn after its cached history) are host-bound: pacing them would only make the host wait for
        decode steps instead of enqueueing layers while they run."""
        if not self._pacing:
            return False
        event = torch.cuda.Event()
        event.record()
        self._paced.append(event)
        while len(self._paced) > PACE_AHEAD:
            self._paced.popleft().synchronize()
        return True

    def graphed(self, tokens: int) -> bool:
        """Whether a prefill of ``tokens`` tokens in all runs through the prefill's graphs."""
        graphs = self.decoder.prefill_graphs
        return graphs is not None and graphs.bucket(tokens) is not None

    def can_launch(self, rows: DecodeRows) -> bool:
        """Whether this decode step has a captured graph (or needs none)."""
        return self.graphs is None or self._graph_key(rows) in self.graphs

    def decode(self, rows: DecodeRows) -> Launched:
        """Launch one decode step: each row's next token, read from the last-token buffer."""
        n = len(rows)
        self._sync_tables(rows.seqs)
        rows_in_graph, span = self._graph_key(rows)
        host = torch.zeros((3, rows_in_graph), dtype=torch.long)
        host[0] = self.dummy_slot
        host[0, :n] = torch.tensor([s.slot for s in rows.seqs])
        host[2, :n] = torch.tensor(rows.lengths)
        # Answer tokens advance all three rotary axes together, from the prompt's next position.
        host[1, :n] = torch.tensor([s.prompt.next_position + length - s.prompt.length
                                    for s, length in zip(rows.seqs, rows.lengths)])
        began = None
        if self._time_steps:
            began = torch.cuda.Event(enable_timing=True)
            began.record()
        self._inputs[:, :rows_in_graph].copy_(self._pinned(host), non_blocking=True)
        captured = None if self.graphs is None else self.graphs.get((rows_in_graph, span)) \
            or self._capture(rows_in_graph, span)
        if captured is None:
            logits = self._forward(rows_in_graph, span)
        else:
            graph, logits = captured
            graph.replay()
        tokens = self._select(logits[:n], rows.seqs)
        self._last_tokens.index_copy_(0, self._slots[:n], tokens)
        return Launched.of(list(rows.seqs), tokens, decode=True, began=began)

    # -- the parts ---------------------------------------------------------------------

    def _visuals(self, chunks: list[Chunk], bounds: list[int], embeds: torch.Tensor, between):
        """Put the visual features of the chunks' image and video tokens in place; return where they are and
        their deepstack features. An image (a video's temporal patch) is taken from the encoder cache or
        encoded when a chunk first reaches it, once for every chunk of the step that shows it, and its
        features stay with the sequence until its last token is prefilled."""
        todo: dict[tuple, list[tuple[Sequence, int, VisualSpan]]] = {}
        for c in chunks:
            for i, span in enumerate(c.seq.prompt.visuals):
                if span.start < c.end and span.end > c.start and i not in c.seq.features:
                    cached = self.encoded.get(span.key)
                    if cached is not None:
                        c.seq.features[i] = cached
                        self.visuals_from_cache += 1
                    else:
                        todo.setdefault(span.key, []).append((c.seq, i, span))
        if todo:
            first = [users[0] for users in todo.values()]
            pixels = [s.prompt.pixels(span) for s, _, span in first]
            grids = torch.tensor([span.grid for _, _, span in first])
            layout = self.vision.layout(grids, self._upload)
            features, deepstack = self.vision(torch.cat([self._upload(p) for p in pixels]), layout, between)
            offset = 0
            for (key, users), (_, _, span) in zip(todo.items(), first):
                rows = slice(offset, offset + span.end - span.start)
                encoded = Encoded(features[rows], tuple(d[rows] for d in deepstack))
                if self.encoded.budget:
                    # Storage of their own: a view would keep the whole batch's output alive.
                    encoded = Encoded(encoded.features.clone(), tuple(d.clone() for d in encoded.deepstack))
                    self.encoded.put(key, encoded)
                for s, i, _ in users:
                    s.features[i] = encoded
                offset = rows.stop
            self.visuals_encoded += len(first)
            self.visuals_from_cache += sum(len(users) - 1 for users in todo.values())
        where, parts, deep = [], [], []
        for c, start in zip(chunks, bounds):
            for i, span in enumerate(c.seq.prompt.visuals):
                a, b = max(span.start, c.start), min(span.end, c.end)
                if a >= b:
                    continue
                features, stack = c.seq.features[i].features, c.seq.features[i].deepstack
                where.append(torch.arange(a - c.start, b - c.start) + start)
                parts.append(features[a - span.start:b - span.start])
                deep.append([d[a - span.start:b - span.start] for d in stack])
                if b == span.end:
                    del c.seq.features[i]
        if not where:
            return None, []
        visual = self._upload(torch.cat(where))
        embeds.index_copy_(0, visual, torch.cat(parts).to(embeds.dtype))
        return visual, [torch.cat(layer) for layer in zip(*deep)]

    def _context(self, chunks: list[Chunk]) -> Context:
        """Where chunks that continue their sequences read its earlier keys: each whole sequence so far."""
        ends = [0, *itertools.accumulate(c.end for c in chunks)]
        index = np.concatenate([self._flat(c.seq.blocks, 0, c.end) for c in chunks])
        return Context(self._upload(torch.from_numpy(index)), ends, self._upload(torch.tensor(ends, dtype=torch.int32)),
                       max(c.end for c in chunks))

    def _flat(self, blocks: list[int], start: int, end: int) -> np.ndarray:
        """Flat cache positions (block x block_size + offset) of tokens ``start:end`` of a sequence."""
        size = self.config.block_size
        positions = np.arange(start, end)
        return np.asarray(blocks, dtype=np.int64)[positions // size] * size + positions % size

    def _sync_tables(self, seqs: list[Sequence]) -> None:
        """Upload the block-table entries these sequences gained since the last upload (all of them for a
        sequence new to its slot: its block list is a new list object then)."""
        slots, columns, blocks = [], [], []
        for s in seqs:
            uploaded, count = self._synced.get(s.slot, (None, 0))
            if uploaded is not s.blocks:
                count = 0
            if len(s.blocks) > count:
                slots += [s.slot] * (len(s.blocks) - count)
                columns += range(count, len(s.blocks))
                blocks += s.blocks[count:]
                self._synced[s.slot] = (s.blocks, len(s.blocks))
        if slots:
            slot, column, block = self._upload(torch.tensor([slots, columns, blocks]))
            self.cache.tables[slot, column] = block.int()

    def _graph_key(self, rows: DecodeRows) -> tuple[int, int]:
        n = len(rows)
        span = min(self._round_span(max(rows.lengths) + 1), self.cache.tables.shape[1] * self.config.block_size)
        return (self._bucket(n) if self.graphs is not None else n), span

    def _round_span(self, tokens: int) -> int:
        return -(-tokens // self._span_step) * self._span_step

    def _bucket(self, n: int) -> int:
        return next(b for b in self._buckets if b >= n)

    def _forward(self, rows: int, span: int) -> torch.Tensor:
        """One decode step over the first ``rows`` static inputs: graph-capturable."""
        slots = self._slots[:rows]
        return self.decoder.step(self._last_tokens[slots].view(rows, 1), slots, self._positions[:rows],
                                 self._lengths[:rows], span)

    def _capture(self, rows: int, span: int):
        """Record the decode step for this (batch, span) shape once; later steps replay it.

        A capture that fails leaves the allocator's graph pool unusable for the next one, so the runner
        goes on without graphs (slower steps, the same tokens) instead of failing every later step."""
        try:
            return self._record(rows, span)
        except Exception:
            log.exception("capturing the decode step for %d sequences x %d tokens failed: decode steps run "
                          "without CUDA graphs from now on", rows, span)
            self.graphs = None
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
        self.graphs[rows, span] = (graph, logits)
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

    def _upload(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._pinned(tensor).to(self.device, non_blocking=True)
