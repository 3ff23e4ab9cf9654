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

from backend_python.attention import LARGE_FROM_ROWS, launch_for

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import json, sys, torch
import torch.nn.functional as F
from backend_python.attention import decode_attention, launch_for

torch.manual_seed(0)
lengths = torch.tensor(json.loads(sys.argv[1]))
rows, kv_heads, group, dim = len(lengths), 2, 4, 64
max_len = 3 * launch_for(rows).chunk
q = torch.randn(rows, kv_heads, group, dim)
# This step's key and value as the decode step makes them: views with the heads' own strides.
key = torch.randn(rows, 1, kv_heads, dim).transpose(1, 2)
value = torch.randn(rows, 1, 3 * kv_heads, dim)[:, :, kv_heads:2 * kv_heads].transpose(1, 2)
keys = torch.randn(rows + 2, kv_heads, max_len, dim)  # more slots than rows, as in the engine
values = torch.randn(rows + 2, kv_heads, max_len, dim)
expected_keys, expected_values = keys.clone(), values.clone()
for row, n in enumerate(lengths.tolist()):
    expected_keys[row, :, n], expected_values[row, :, n] = key[row, :, 0], value[row, :, 0]
out = decode_attention(q, key, value, keys, values, lengths, dim ** -0.5)
mask = (torch.arange(max_len)[None, :] <= lengths[:, None]).view(rows, 1, 1, max_len)
k, v = expected_keys[:rows].double(), expected_values[:rows].double()
ref = F.scaled_dot_product_attention(q.double(), k, v, attn_mask=mask, scale=dim ** -0.5)
# What a kernel that read past a row's length (or another row's slot) would get instead.
over = F.scaled_dot_product_attention(q.double(), k, v, scale=dim ** -0.5)
print(json.dumps({"shape": list(out.shape), "error": (out.double() - ref).abs().max().item(),
                  "error_if_unmasked": (over - ref).abs().max().item(),
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
    """Lengths on both sides of chunk and block edges, a one-token cache, and the last position, with
    each launch shape (they differ in chunk and block)."""
    shape = launch_for(rows)
    edges = [0, 1, shape.block - 1, shape.block, shape.chunk - 1, shape.chunk, 3 * shape.chunk - 1]
    lengths = (edges * rows)[:rows]
    result = run_kernels(lengths)
    assert result["shape"] == [rows, 2, 4, 64]
    assert result["error"] < 1e-5
    assert result["error_if_unmasked"] > 1e-2  # the comparison would catch a kernel reading too far
    assert result["cache_written"], "the new key and value belong at each row's length, nowhere else"
