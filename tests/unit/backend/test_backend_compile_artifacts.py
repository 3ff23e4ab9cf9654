"""Compile artifacts carried from one start to a start on a machine whose caches are empty.

Inductor runs for real here, on the CPU (the engine only compiles on CUDA, but the mega-cache is the
same mechanism): one process compiles and writes the file, another with empty caches loads it and
finds its graph in the cache instead of compiling it. Triton cannot compile here (no GPU), so its
cache holds entries written in Triton's own layout (a folder per kernel, a group file naming the
kernel's files by absolute path): they stand in for the decode-attention kernels a GPU start writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend_python.compile_artifacts import CompileArtifacts, artifact_key

pytestmark = pytest.mark.unit

START = """
import json, sys
import torch
from torch._dynamo.utils import counters
from backend_python.compile_artifacts import CompileArtifacts

artifacts = CompileArtifacts(sys.argv[2], "test")
loaded = sys.argv[1] == "load" and artifacts.load()
step = torch.compile(lambda x, w: torch.nn.functional.silu(x @ w) * 2 + 1, dynamic=True)
step(torch.randn(3, 8), torch.randn(8, 8))
saved = sys.argv[1] == "save" and artifacts.save(["_partial"])
print(json.dumps({"loaded": loaded, "saved": saved, "outcome": artifacts.outcome, **counters["inductor"]}))
"""


def _triton_entry(cache: Path, entry: str, kernel: str) -> None:
    folder = cache / entry
    folder.mkdir(parents=True)
    for suffix in ("json", "cubin"):
        (folder / f"{kernel}.{suffix}").write_text(f"{kernel} {suffix}")
    children = {f"{kernel}.{s}": str(folder / f"{kernel}.{s}") for s in ("json", "cubin")}
    (folder / f"__grp__{kernel}.json").write_text(json.dumps({"child_paths": children}))


def _start(mode: str, machine: Path, artifacts: Path, script: Path) -> tuple[dict, str]:
    """One start in a process of its own (what it reports, and what it logged) on ``machine``'s caches."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(machine / "inductor"), "TRITON_CACHE_DIR": str(machine / "triton"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, str(script), mode, str(artifacts)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_a_start_on_an_empty_machine_loads_what_another_compiled(tmp_path):
    script, artifacts = tmp_path / "start.py", tmp_path / "shared"
    script.write_text(START)
    first, second = tmp_path / "first", tmp_path / "second"
    _triton_entry(first / "triton", "a1", "_partial")
    _triton_entry(first / "triton", "b2", "triton_poi_fused_add_0")  # Inductor's own: in its part of the file

    wrote, _ = _start("save", first, artifacts, script)
    assert wrote["saved"] and wrote["outcome"] == "written" and wrote["fxgraph_cache_miss"] == 1
    assert [p.name for p in artifacts.iterdir()] == ["compile-test.zip"]  # no temporary file left
    assert (artifacts / "compile-test.zip").stat().st_mode & 0o777 == 0o644  # for kubectl cp, other users

    read, _ = _start("load", second, artifacts, script)
    assert read["loaded"] and read["outcome"] == "loaded"
    assert read.get("fxgraph_cache_hit") == 1 and "fxgraph_cache_miss" not in read
    restored = second / "triton"
    assert sorted(p.name for p in restored.iterdir()) == ["a1"]
    group = json.loads((restored / "a1" / "__grp___partial.json").read_text())["child_paths"]
    assert sorted(group.values()) == [str(restored / "a1" / "_partial.cubin"), str(restored / "a1" / "_partial.json")]
    assert (restored / "a1" / "_partial.cubin").read_text() == "_partial cubin"


def test_a_missing_or_broken_file_means_compiling_as_before(tmp_path, caplog):
    missing = CompileArtifacts(tmp_path, "absent")
    assert not missing.load() and missing.outcome == "missing"
    broken = CompileArtifacts(tmp_path, "broken")
    broken.path.write_bytes(b"not a zip file")
    assert not broken.load() and broken.outcome == "unreadable"
    assert "could not be loaded: compiling instead" in caplog.text


def test_a_folder_that_takes_no_file_costs_a_warning_not_the_start(tmp_path):
    script = tmp_path / "start.py"
    script.write_text(START)
    (tmp_path / "file").write_text("")
    # A file where the folder should be.
    report, logged = _start("save", tmp_path / "machine", tmp_path / "file" / "below", script)
    assert not report["saved"] and report["outcome"] == "not used"
    assert "could not be written" in logged


def test_the_file_name_follows_what_the_code_depends_on_not_where_the_checkpoint_lies():
    facts = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "model": {"hidden_size": 2560, "_name_or_path": "/a"}}
    moved = {**facts, "model": {"hidden_size": 2560, "_name_or_path": "/models/b"}}
    wider = {**facts, "model": {"hidden_size": 4096, "_name_or_path": "/a"}}
    assert artifact_key(facts) == artifact_key(moved)
    assert artifact_key(facts) != artifact_key(wider) != artifact_key({**facts, "torch": "2.12.0"})
    assert artifact_key(facts).startswith("nvidia-h100-80gb-hbm3-")
