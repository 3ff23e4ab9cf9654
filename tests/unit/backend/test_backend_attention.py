"""The GPU decode-attention kernels, run by Triton's interpreter on the CPU, against SDPA over the same cache.

The interpreter executes the very kernels the GPU compiles (it is chosen when the module is
imported, hence a fresh process); the bench checks them on an H100 (greedy agreement in float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend_python.attention import LARGE_FROM_ROWS, chunk_for, launch_for

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import json, sys, torch
import torch.nn.functional as F
from backend_python.attention import decode_attention

torch.manual_seed(0)
lengths = torch.tensor(json.loads(sys.argv[1]))
rows, kv_heads, group, dim, page = len(lengths), 2, 4, 64, 16
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
    expected_keys[blocks[row][n // page], n % page], expected_values[blocks[row][n // page], n % page] = \
        key[row, :, 0], value[row, :, 0]
out = decode_attention(q, key, value, keys, values, lengths, slots, tables, dim ** -0.5)
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
print(json.dumps({"shape": list(out.shape), "error": max(errors), "error_if_unmasked": min(unmasked),
                  "cache_written": torch.equal(keys, expected_keys) and torch.equal(values, expected_values)}))
"""


def run_kernels(lengths: list[int]) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps(lengths)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("rows", [6, LARGE_FROM_ROWS], ids=["few rows", "many rows"])
def test_each_row_writes_its_new_token_and_attends_to_exactly_its_own_cached_tokens(rows):
    """Lengths on both sides of page, block and chunk edges, a one-token cache, and a length long enough
    that every split runs (the chunk grows with the length), with each launch shape (they differ in
    chunk, splits and block); the rows' blocks lie scattered in the pool."""
    shape = launch_for(rows)
    long = shape.splits * shape.min_chunk + 3 * shape.block + 5
    assert chunk_for(long + 1, shape) > shape.min_chunk
    edges = [0, 1, 15, 16, shape.block - 1, shape.block, shape.min_chunk - 1, shape.min_chunk, long]
    lengths = (edges * rows)[:rows]
    result = run_kernels(lengths)
    assert result["shape"] == [rows, 2, 4, 64]
    assert result["error"] < 1e-5
    assert result["error_if_unmasked"] > 1e-3  # the comparison would catch a kernel reading too far
    assert result["cache_written"], "the new key and value belong at each row's length, nowhere else"
