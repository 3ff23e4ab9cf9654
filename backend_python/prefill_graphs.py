"""The prefill's matrix work as captured CUDA graphs, one set per token-count bucket.

A prefill of a few prompts is host-bound on a GPU: each decoder layer is two compiled
regions (everything before attention, everything after it) whose guards, wrappers and
kernel launches cost the host several times the device's work, so under an open loop of
image requests the engine thread spends most of its time launching prefills. The regions
between attentions do the same work for any prompt of a given length, so they are
recorded once per bucket of token counts (padded up, as vLLM's piecewise graphs do) and
replayed; attention, whose shape follows each chunk's context, runs eagerly between them.

Rows past a prefill's tokens are padding: every operation in a region works on each
token's row alone, so they cannot change a real row, and their keys and values go to the
cache's spare block, which no sequence is given.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


class PrefillGraphs:
    """Static buffers for prefills of up to ``max_tokens`` tokens, and each bucket's graphs: per layer,
    one for the work before attention (which also writes the keys and values to the cache) and one
    for the work after it. Without ``capture`` (a CPU) the regions run directly on the same padded
    buffers, which keeps that path testable."""

    def __init__(self, decoder, max_tokens: int, pad_position: int, capture: bool):
        self.decoder = decoder
        self.sizes = [b for b in BUCKETS if b < max_tokens] + [max_tokens]
        weight = decoder.layers[0][1]
        device, dtype = weight.device, weight.dtype
        width, d = weight.shape[1], decoder.head_dim
        top = self.sizes[-1]
        self.pad_position = pad_position
        self.hidden = torch.zeros((top, 1, width), dtype=dtype, device=device)
        self.attended = torch.zeros((top, 1, decoder.heads * d), dtype=dtype, device=device)
        self.q = torch.zeros((top, decoder.heads, d), dtype=dtype, device=device)
        self.k = torch.zeros((top, decoder.kv_heads, d), dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.cos = torch.zeros((top, 1, 1, d), dtype=dtype, device=device)
        self.sin = torch.zeros_like(self.cos)
        self.written = torch.full((top,), pad_position, dtype=torch.long, device=device)
        self._capture = capture
        self._graphs: dict[int, list[tuple]] = {}
        self._pool = None
        self._size = top  # the bucket of the prefill being run

    def bucket(self, tokens: int) -> int | None:
        return next((s for s in self.sizes if s >= tokens), None)

    def capture_all(self) -> None:
        """Record every bucket's graphs, largest first (the smaller reuse its memory pool)."""
        if not self._capture:
            return
        stream = torch.cuda.Stream()
        for size in reversed(self.sizes):
            self._size = size
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # each region once first: compiled code settles its shapes
                for layer in range(len(self.decoder.layers)):
                    self._project(layer)
                    self._feed_forward(layer)
            torch.cuda.current_stream().wait_stream(stream)
            graphs = []
            for layer in range(len(self.decoder.layers)):
                pair = []
                for region in (self._project, self._feed_forward):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self._pool):
                        region(layer)
                    self._pool = graph.pool()
                    pair.append(graph)
                graphs.append(tuple(pair))
            self._graphs[size] = graphs
        self.written.fill_(self.pad_position)
        log.info("captured the prefill's layers for %s tokens", self.sizes)

    def load(self, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        """Put a prefill's inputs in the buffers of its bucket; return its hidden states (a view)."""
        tokens = embeds.shape[0]
        self._size = self.bucket(tokens)
        self.hidden[:tokens, 0].copy_(embeds)
        self.cos[:tokens].copy_(cos)
        self.sin[:tokens].copy_(sin)
        self.written[tokens:self._size].fill_(self.pad_position)
        self.written[:tokens].copy_(written)
        return self.hidden[:tokens]

    def project(self, layer: int, tokens: int):
        """q, k and v of the prefill's tokens (views); their keys and values are in the cache."""
        self._run(layer, 0)
        return self.q[:tokens], self.k[:tokens], self.v[:tokens]

    def feed_forward(self, layer: int, attended: torch.Tensor) -> torch.Tensor:
        tokens = attended.shape[0]
        self.attended[:tokens].copy_(attended.view(tokens, 1, -1))
        self._run(layer, 1)
        return self.hidden[:tokens]

    def _run(self, layer: int, part: int) -> None:
        graphs = self._graphs.get(self._size)
        if graphs is not None:
            graphs[layer][part].replay()
        else:
            (self._project, self._feed_forward)[part](layer)

    # The regions, on the current bucket's rows of the buffers.

    def _project(self, layer: int) -> None:
        n, dec = self._size, self.decoder
        norm_w, qkv_w, q_norm_w, k_norm_w = dec.layers[layer][:4]
        q, k, v = dec._project(self.hidden[:n], norm_w, qkv_w, q_norm_w, k_norm_w, self.cos[:n], self.sin[:n],
                               dec.eps, dec.heads, dec.kv_heads, dec.head_dim)
        k, v = k.squeeze(2), v.squeeze(2)
        dec.cache.write(layer, k, v, self.written[:n])
        self.q[:n].copy_(q.squeeze(2))
        self.k[:n].copy_(k)
        self.v[:n].copy_(v)

    def _feed_forward(self, layer: int) -> None:
        n, dec = self._size, self.decoder
        o_w, post_w, gate_up_w, down_w = dec.layers[layer][4:]
        self.hidden[:n].copy_(dec._feed_forward(self.hidden[:n], self.attended[:n], o_w, post_w, gate_up_w, down_w,
                                                dec.eps))
