"""A prefill's layer work as captured CUDA graphs, one set per bucket of row counts.

A prefill of a few prompts is host-bound on a GPU: each decoder layer and each vision block
is two compiled regions (the work before attention and the work after it) whose guards,
wrappers and kernel launches cost the host several times the device's work, so under an
open loop of image requests the engine thread spends most of its time launching
prefills. Those regions do the same work for any input of a given number of rows (tokens,
image patches), so they are recorded once per bucket of row counts, the rows padded up (as
vLLM's piecewise graphs do), and replayed; attention, whose shape follows each chunk's
context and each image's size, runs as it comes between them.

Padding rows cannot change a real row: every operation in a region works on each row alone.
The decoder's padding rows write their keys and values to the cache's spare block, which
no sequence is given.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)

# A region: (layer, rows) -> None, reading and writing the buffers' first ``rows`` rows.
Region = Callable[[int, int], None]


class LayerGraphs:
    """Static buffers of ``max_rows`` rows (``buffers``: name -> (row shape, dtype)), and per bucket of
    rows up to it, each layer's ``before`` and ``after`` regions as graphs. Without ``capture`` (a CPU)
    the regions run directly on the same padded buffers, which keeps that path testable."""

    def __init__(self, name: str, layers: int, before: Region, after: Region, max_rows: int, min_rows: int,
                 buffers: dict[str, tuple[tuple[int, ...], torch.dtype]], device: torch.device, capture: bool):
        self.name, self.layers, self.regions = name, layers, (before, after)
        self.sizes = [b for b in BUCKETS if min_rows <= b < max_rows] + [max_rows]
        self.buffers = {key: torch.zeros((max_rows, *shape), dtype=dtype, device=device)
                        for key, (shape, dtype) in buffers.items()}
        self._capture = capture
        self._graphs: dict[int, list[tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]]] = {}
        self.rows = max_rows  # the bucket of the input being run

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.buffers[key]

    def bucket(self, rows: int) -> int | None:
        return next((s for s in self.sizes if s >= rows), None)

    def capture_all(self, pool=None):
        """Record every bucket's graphs, largest first (the smaller reuse its memory); returns the pool."""
        if not self._capture:
            return pool
        stream = torch.cuda.Stream()
        for size in reversed(self.sizes):
            self.rows = size
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # each region once first: compiled code settles its shapes
                for layer in range(self.layers):
                    for region in self.regions:
                        region(layer, size)
            torch.cuda.current_stream().wait_stream(stream)
            graphs = []
            for layer in range(self.layers):
                pair = []
                for region in self.regions:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        region(layer, size)
                    pool = graph.pool()
                    pair.append(graph)
                graphs.append(tuple(pair))
            self._graphs[size] = graphs
        log.info("captured the %s's layers for %s rows", self.name, self.sizes)
        return pool

    def start(self, rows: int) -> int:
        """An input of ``rows`` rows is about to be loaded; returns its bucket."""
        self.rows = self.bucket(rows)
        return self.rows

    def run(self, layer: int, part: int) -> None:
        """Region ``part`` (0: before attention, 1: after) of ``layer`` on the current bucket."""
        graphs = self._graphs.get(self.rows)
        if graphs is not None:
            graphs[layer][part].replay()
        else:
            self.regions[part](layer, self.rows)
