"""The serving processes' garbage collector: the start-up heap is no longer walked by a full
collection, and a slow collection is logged with the process's name. Each case runs in a process of
its own: freezing the test session's heap would outlive the test."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_after_start_up_a_full_collection_no_longer_walks_the_start_up_heap():
    out = run("""
        import gc
        from backend_python import gc_pauses
        model = [[i] for i in range(200_000)]  # lives as long as the process, as a model's objects do
        before = len(gc.get_objects())
        gc_pauses.settle("the model's process")
        print("walked", before, len(gc.get_objects()))
    """)
    before, after = (int(n) for n in out.split("walked")[1].split())
    assert before > 200_000 and after < before - 200_000


def test_a_slow_collection_is_logged_with_the_process_and_the_generation_once_however_often_it_settles():
    out = run("""
        import gc, logging, sys
        from backend_python import gc_pauses
        logging.basicConfig(format="%(message)s", stream=sys.stdout)
        gc_pauses.settle("the engine process")
        gc_pauses.settle("the engine process")  # a model loaded again in the same process
        gc_pauses.SLOW_S = 0.0
        print("collect", flush=True)
        gc.collect()
        print("collected", flush=True)
    """)
    during = out.split("collect\n")[1].split("collected\n")[0]
    lines = [line for line in during.splitlines() if "garbage collection" in line]
    assert len(lines) == 1 and lines[0].startswith("the engine process: a garbage collection of generation 2 took")
