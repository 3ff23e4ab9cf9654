"""`python -m bench.kernels [--slot-tree PATH]`: one decode step's attention alone, on the GPU.

This tree's kernel reads each row's cached keys and values through its block table, from one pool per
layer, laid out token-major (blocks, block_size, kv_heads, dim: the cache's) or head-major (blocks,
kv_heads, block_size, dim), see ``--layouts``; with ``--slot-tree`` (a checkout of the slot engine, e.g.
664c832) its kernel reads them from one contiguous (kv_heads, max_len, dim) line per sequence. Both
get the same keys and values in Qwen3-VL-4B's shapes (8 KV heads of 128 dimensions, 4 query heads
each), 36 layers of them by default (one step; each layer in its own memory, so that none is read
from L2), for rows of 1, 64 and 128 sequences of the same length. Each step is captured as a CUDA
graph and replayed: prints milliseconds per step (the median of ``--repeats``) and how far apart the
two kernels' outputs are.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from backend_python import attention
from bench.stats import table

KV_HEADS, GROUP, DIM = 8, 4, 128


def _slot_module(tree: str):
    spec = importlib.util.spec_from_file_location("slot_attention", Path(tree) / "backend_python" / "attention.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _time(step, device: torch.device, repeats: int) -> float:
    """Milliseconds per call of ``step``, replayed from a CUDA graph on a GPU."""
    step()  # compiles the kernels for these shapes
    if device.type != "cuda":
        began = time.perf_counter()
        step()
        return 1000 * (time.perf_counter() - began)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _pool(layout: str, tokens: torch.Tensor) -> torch.Tensor:
    """One layer's keys or values (given token-major), indexed (block, position in block, kv head, dim) whatever
    the layout."""
    if layout == "head":
        return tokens.transpose(1, 2).contiguous().transpose(1, 2)
    return tokens


def compare(rows: int, length: int, block_size: int, max_len: int, slot, device: torch.device, dtype: torch.dtype,
            repeats: int, layers: int, layouts: list[str], launch: attention.Launch | None = None) -> dict:
    gen = torch.Generator(device=device).manual_seed(rows * 100_003 + length)
    rand = lambda *shape: torch.randn(*shape, generator=gen, device=device, dtype=dtype)  # noqa: E731
    q, key, value = rand(rows, KV_HEADS, GROUP, DIM), rand(rows, KV_HEADS, 1, DIM), rand(rows, KV_HEADS, 1, DIM)
    lengths = torch.full((rows,), length, dtype=torch.long, device=device)
    per_row = -(-(length + 1) // block_size)
    # Each row's blocks scattered over the pool, as after a while of serving.
    order = torch.randperm(rows * per_row, generator=torch.Generator().manual_seed(length)).to(device)
    tables = order.view(rows, per_row).to(torch.int32)
    slots = torch.arange(rows, device=device)
    scale = DIM ** -0.5
    row = {"rows": str(rows), "cached tokens": str(length)}
    outputs = {}
    for layout in layouts:  # one layout's pools at a time: 36 layers of 128 x 1,024 tokens are 19 GiB
        gen.manual_seed(length)  # the same tokens in every layout
        pools = [tuple(_pool(layout, rand(rows * per_row, block_size, KV_HEADS, DIM)) for _ in "kv")
                 for _ in range(layers)]

        def step(pools=pools):
            return [attention.decode_attention(q, key, value, k, v, lengths, slots, tables, scale, launch)
                    for k, v in pools]

        row[f"paged {layout}-major ms/step"] = f"{_time(step, device, repeats):.3f}"
        outputs[layout] = step()[-1].float()
        if slot is not None and layout == layouts[-1]:  # the same tokens, each row's in one line
            line = lambda pool: torch.zeros(rows, KV_HEADS, max_len, DIM, device=device, dtype=dtype).index_copy_(  # noqa: E731
                2, torch.arange(per_row * block_size, device=device),
                pool[tables.long()].flatten(1, 2).transpose(1, 2))
            lines = [(line(k), line(v)) for k, v in pools]
            del pools, step
            lined = lambda: [slot.decode_attention(q, key, value, k, v, lengths, scale) for k, v in lines]  # noqa: E731
            row["slot ms/step"] = f"{_time(lined, device, repeats):.3f}"
            outputs["slot"] = lined()[-1].float()
            del lines, lined
        else:
            del pools, step
    reference = outputs.pop(layouts[0])
    worst = max(((out - reference).norm() / reference.norm()).item() for out in outputs.values()) if outputs else 0.0
    row["largest relative difference"] = f"{worst:.1e}"
    return row


def _launch(text: str) -> attention.Launch:
    return attention.Launch(*(int(part) for part in text.split(",")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slot-tree", help="a checkout of the slot engine, whose kernel runs beside this one's")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 128])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 768, 1024])
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2048, help="the slot engine's tokens per slot")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--layers", type=int, default=36, help="Qwen3-VL-4B's decoder layers: one step")
    parser.add_argument("--layouts", nargs="+", default=["token"], choices=["token", "head"],
                        help="the paged pool's layouts to time (the same tokens in each)")
    parser.add_argument("--launch", type=_launch, action="append", default=[None],
                        metavar="CHUNK,SPLITS,BLOCK,WARPS,STAGES",
                        help="also time this launch shape (repeatable; the rows' own shape always runs)")
    parser.add_argument("--device", default="cuda", help="cpu needs TRITON_INTERPRET=1 (a check that it runs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    slot = _slot_module(args.slot_tree) if args.slot_tree else None
    rows = []
    for n in args.rows:
        for length in args.lengths:
            for launch in args.launch:
                row = compare(n, length, args.block_size, args.max_len, slot if launch is None else None, device,
                              dtype, args.repeats, args.layers, args.layouts, launch)
                rows.append({"launch": "the rows' own" if launch is None else ",".join(map(str, vars(launch).values())),
                             **row})
                print(rows[-1], flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (Triton's interpreter)"
    print(f"decode attention, {args.layers} layers of {KV_HEADS} KV heads x {GROUP} query heads x {DIM} dims, {name}:")
    print(table(rows))


if __name__ == "__main__":
    main()
