"""`python -m planner` as a user runs it: a table on stdout, a PNG and a JSON in --out."""

import subprocess
import sys
from pathlib import Path

import pytest

from planner.scaledobject import load_overlay
from planner.traffic import constant, write_csv

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
OVERLAY = Path(__file__).parent / "data" / "overlay"
GPU = ROOT / "planner/profiles/h200-qwen3-vl-4b.json"


def planner(*args):
    return subprocess.run([sys.executable, "-m", "planner", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def csv_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "ten-minutes.csv"
    write_csv(constant(5, rps=4.0, seconds=600), path)
    return path


def test_compare_prints_every_policy_and_writes_the_plot(tmp_path, csv_trace):
    run = planner("--overlay", OVERLAY, "--profile", GPU, "--trace", csv_trace, "--compare", "--out", tmp_path)
    assert run.returncode == 0, run.stderr
    for policy in ("static at peak", "static at mean", "queue only", "occupancy only", "issue 24 combination",
                   "KEDA overlay (as built)"):
        assert policy in run.stdout
    assert "of static peak" in run.stdout and "time to capacity" in run.stdout
    png = tmp_path / "ten-minutes-compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert (tmp_path / "ten-minutes-compare.json").exists()


def test_same_seed_same_table(tmp_path):
    args = ("--overlay", OVERLAY, "--profile", GPU, "--trace", "burst", "--hours", "1", "--seed", "4")
    first = planner(*args, "--out", tmp_path / "a")
    second = planner(*args, "--out", tmp_path / "b")
    assert first.returncode == 0, first.stderr
    table = lambda out: [line for line in out.splitlines() if line.startswith("|")]  # noqa: E731
    assert table(first.stdout) == table(second.stdout)
    assert (tmp_path / "a" / "burst-as-built.json").read_text() == (tmp_path / "b" / "burst-as-built.json").read_text()


def test_a_schedule_learnt_from_history_is_written_as_cron_triggers(tmp_path, csv_trace):
    folder = tmp_path / "scheduled"
    run = planner("--overlay", OVERLAY, "--profile", GPU, "--trace", csv_trace, "--schedule-from", "ramp",
                  "--peak-rps", "40", "--schedule-overlay", folder, "--out", tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    so, _ = load_overlay(folder)
    cron = [t for t in so.triggers if t.type == "cron"]
    assert cron and all(t.schedule.replicas > so.min_replica_count for t in cron)
    assert "schedule (minimum replicas by time of day)" in run.stdout


def test_search_writes_an_overlay_that_builds(tmp_path, csv_trace):
    folder = tmp_path / "proposed"
    run = planner("--overlay", OVERLAY, "--profile", GPU, "--trace", csv_trace, "--search", "--slo-share", "0.95",
                  "--propose-overlay", folder, "--out", tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "the proposal" in run.stdout
    so, _ = load_overlay(folder)
    assert f'"minReplicaCount": {so.min_replica_count}' in run.stdout
    # only values change: the overlay's queries and Prometheus address stay its own
    built, _ = load_overlay(OVERLAY)
    assert {t.query for t in so.triggers} <= {t.query for t in built.triggers}
    patch = folder / "scaledobject-patch.yaml"
    assert not patch.exists() or "serverAddress" not in patch.read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (("--profile", "missing.json", "--trace", "step"), "profile file not found"),
        (("--profile", GPU, "--trace", "weekly"), "unknown trace"),
        (("--profile", GPU, "--trace", "step", "--slo-share", "2"), "--slo-share"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, tmp_path):
    run = planner("--overlay", OVERLAY, *args, "--out", tmp_path)
    assert run.returncode == 2
    assert message in run.stderr
