"""`make bench-scaleout` on this CPU: two real Triton replicas behind the real frontend, the second
started under load, and the benchmark's account of it (the flow the H200 run will take, in seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(300)
def test_two_replicas_both_serve_and_no_request_fails(tmp_path):
    command = [sys.executable, "-m", "bench.scaleout", "--cpu", "--gpus", "2", "--tokens", "16", "--rates", "2",
               "--rate-seconds", "3", "--refine", "0", "--event-seconds", "24", "--event-start", "2", "--clients", "1"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OUT": str(tmp_path)}, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "scaleout.json").read_text())

    two = report["capacity"]["2"]["runs"]
    assert all(run["errors"] == 0 for c in report["capacity"].values() for run in c["runs"]), done.stdout[-3000:]
    assert all(n > 0 for n in two[0]["served"].values()) and len(two[0]["served"]) == 2, two[0]["served"]
    event = report["scale_event"]
    assert event["failed"] == 0, event["first_error"]
    assert event["ready_s"] > event["started_s"] > 0
    assert event["routed"][-1][1][1] > 0, "the replica started under load got no request"
    assert report["replica_capacity_req_s"] == 2
    assert (tmp_path / "scaleout-event.png").stat().st_size > 0
    print(done.stdout[done.stdout.index("\nCPU only"):])
