"""The GPU decode-attention kernels, run by Triton's interpreter on the CPU, against SDPA over the same cache.

The interpreter executes the very kernels the GPU compiles (it is chosen when the module is
imported, hence a fresh process); the GPU bench checks them on the card (greedy agreement in float32).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend_python.attention import LAUNCHES, chunk_for, tile_for

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import json, sys, torch
import torch.nn.functional as F
from backend_python.attention import Launch, decode_attention

def check(lengths, page, launch):
    torch.manual_seed(0)
    lengths = torch.tensor(lengths)
    rows, kv_heads, group, dim = len(lengths), 2, 4, 64
    q = torch.randn(rows, kv_heads, group, dim)
    # This step's key and value as the decode step makes them: views with the heads' own strides.
    key = torch.randn(rows, 1, kv_heads, dim).transpose(1, 2)
    value = torch.randn(rows, 1, 3 * kv_heads, dim)[:, :, kv_heads:2 * kv_heads].transpose(1, 2)
    # Each row's blocks anywhere in a shuffled pool, rows in slots of their own (as sequences come and go).
    need = [n // page + 1 for n in lengths.tolist()]
    blocks = torch.randperm(sum(need) + 5).split(need + [5])[:-1]
    slots = torch.randperm(rows + 3)[:rows]
    tables = torch.full((rows + 3, max(need) + 2), -1, dtype=torch.int32)
    for slot, row_blocks in zip(slots.tolist(), blocks):
        tables[slot, :len(row_blocks)] = row_blocks.int()
    keys = torch.randn(sum(need) + 5, page, kv_heads, dim)
    values = torch.randn(sum(need) + 5, page, kv_heads, dim)
    expected_keys, expected_values = keys.clone(), values.clone()
    for row, n in enumerate(lengths.tolist()):
        expected_keys[blocks[row][n // page], n % page], expected_values[blocks[row][n // page], n % page] = \\
            key[row, :, 0], value[row, :, 0]
    out = decode_attention(q, key, value, keys, values, lengths, slots, tables, dim ** -0.5, Launch(*launch))
    errors, unmasked = [], []
    for row, n in enumerate(lengths.tolist()):
        k = expected_keys[blocks[row]].flatten(0, 1)[: n + 1].transpose(0, 1).double()
        v = expected_values[blocks[row]].flatten(0, 1)[: n + 1].transpose(0, 1).double()
        ref = F.scaled_dot_product_attention(q[row].double(), k, v, scale=dim ** -0.5)
        errors.append((out[row].double() - ref).abs().max().item())
        # What a kernel that read the whole of the row's last block (past its length) would get instead.
        k_over = expected_keys[blocks[row]].flatten(0, 1).transpose(0, 1).double()
        v_over = expected_values[blocks[row]].flatten(0, 1).transpose(0, 1).double()
        over = F.scaled_dot_product_attention(q[row].double(), k_over, v_over, scale=dim ** -0.5)
        if (n + 1) % page:
            unmasked.append((over - ref).abs().max().item())
    return {"shape": list(out.shape), "error": max(errors), "error_if_unmasked": min(unmasked),
            "cache_written": torch.equal(keys, expected_keys) and torch.equal(values, expected_values)}

cases = json.loads(sys.argv[1])
print(json.dumps([check(case["lengths"], case["page"], case["launch"]) for case in cases]))
"""


def run_kernels(cases: list[dict]) -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps(cases)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("page", [16, 64], ids=["blocks smaller than a tile", "blocks of whole tiles"])
def test_each_row_writes_its_new_token_and_attends_to_exactly_its_own_cached_tokens(page):
    """With every launch shape the engine uses: lengths on both sides of block, tile and chunk edges, a
    one-token cache, and a length long enough that every split runs (the chunk grows with the length);
    the rows' blocks lie scattered in the pool."""
    cases = []
    for _, launch in LAUNCHES:
        tile = tile_for(launch, page)
        long = launch.splits * launch.min_chunk + 3 * tile + 5
        assert chunk_for(long + 1, launch, page) > launch.min_chunk
        lengths = [0, 1, 15, 16, page - 1, page, tile - 1, tile, launch.min_chunk - 1, launch.min_chunk, long]
        cases.append({"lengths": lengths, "page": page, "launch": list(vars(launch).values())})
    for case, result in zip(cases, run_kernels(cases)):
        assert result["shape"] == [len(case["lengths"]), 2, 4, 64]
        assert result["error"] < 1e-5, case
        assert result["error_if_unmasked"] > 1e-3  # the comparison would catch a kernel reading too far
        assert result["cache_written"], "the new key and value belong at each row's length, nowhere else"


def _compile_for_hopper(launch) -> str:
    """The partial kernel as Triton compiles it for an H100/H200 (sm_90), on this machine: its TTGIR."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from backend_python import attention

    kernel = attention._partial
    pointers = {"q_ptr": "*bf16", "k_new_ptr": "*bf16", "v_new_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16",
                "lengths_ptr": "*i64", "slots_ptr": "*i64", "tables_ptr": "*i32", "acc_ptr": "*fp32",
                "stats_ptr": "*fp32"}
    constants = {"SPLITS": launch.splits, "GROUP": 4, "GROUP_PAD": 16, "DIM": 128, "PAGE": 64,
                 "MIN_CHUNK": launch.min_chunk, "BLOCK": launch.block, "WIDE": False, "PRECISION": "tf32"}
    signature = {name: "constexpr" if name in constants else pointers.get(name, "fp32" if name == "scale_log2"
                                                                          else "i32") for name in kernel.arg_names}
    # As the JIT specialises them at run time: pointers and strides divisible by 16 (the engine's are).
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if name not in constants and name != "scale_log2"}
    source = ASTSource(kernel, signature, {(kernel.arg_names.index(k),): v for k, v in constants.items()}, attrs)
    compiled = compile(source, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": launch.warps, "num_stages": launch.stages})
    return compiled.asm["ttgir"]


@pytest.mark.parametrize("launch", sorted({launch for _, launch in LAUNCHES}, key=str), ids=str)
def test_compiled_for_hopper_the_kernel_keeps_two_tiles_of_keys_and_values_in_flight(launch):
    """The block-id load takes a stage of the software pipeline: with the 3 stages the slot engine's
    kernel had, Triton kept one tile in flight and waited for each load, and on an H200 the kernel
    trailed the slot engine's (which kept two) from 4 to 64 rows. Compiled here by Triton's own
    compiler; no GPU needed."""
    ttgir = _compile_for_hopper(launch)
    buffers = [int(n) for n in re.findall(rf"memdesc<(\d+)x{launch.block}x128xbf16, [^>]*mutable>", ttgir)]
    assert buffers and min(buffers) >= 2, f"keys and values buffered {buffers} deep"
