"""Pod profiles and traces: the shipped files load, bad input is refused, seeds repeat."""

import json
from pathlib import Path

import numpy as np
import pytest

from planner.profile import ProfileError, load_profile, profile_from_json
from planner.traffic import TraceError, bursts, daynight, flash, make_trace, ramp, read_csv, step, write_csv

pytestmark = pytest.mark.unit

PROFILES = Path(__file__).resolve().parents[3] / "planner" / "profiles"


@pytest.mark.parametrize("name", ["h200-qwen3-vl-4b.json", "h100-qwen3-vl-4b.json", "h100-qwen3-vl-4b-derived.json",
                                  "cpu-tiny.json"])
def test_shipped_profiles_load_and_round_trip(name):
    profile = load_profile(PROFILES / name)
    assert profile.slots >= 1 and profile.cold_start.total_seconds > 0
    assert profile.provenance
    assert profile_from_json(json.loads(json.dumps(profile.to_json()))) == profile


def test_step_table_interpolates_between_measured_batches():
    profile = load_profile(PROFILES / "h100-qwen3-vl-4b-derived.json")
    table = profile.step_table()
    assert table[1] == pytest.approx(0.0886)
    assert table[8] == pytest.approx(0.113)
    assert table[64] == pytest.approx(0.093)
    assert 0.093 < table[36] < 0.113


def test_bad_profile_names_the_field(tmp_path):
    doc = load_profile(PROFILES / "h100-qwen3-vl-4b.json").to_json()
    del doc["engine"]["slots"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match="engine.slots"):
        load_profile(path)
    doc["format"] = "something-else"
    with pytest.raises(ProfileError, match="format"):
        profile_from_json(doc)


@pytest.mark.parametrize("make", [daynight, bursts, step, flash, ramp])
def test_same_seed_same_trace(make):
    a, b, c = make(7), make(7), make(8)
    assert np.array_equal(a.arrivals, b.arrivals) and np.array_equal(a.max_tokens, b.max_tokens)
    assert not np.array_equal(a.arrivals[:100], c.arrivals[:100])


def test_step_trace_goes_from_5_to_30_requests_per_second():
    trace = step(1)
    t, rate = trace.rate(60)
    assert np.mean(rate[(t >= 60) & (t < 540)]) == pytest.approx(5, rel=0.1)
    assert np.mean(rate[(t >= 660) & (t < 2340)]) == pytest.approx(30, rel=0.05)
    assert trace.bursts[0].rps == 30


def test_a_flash_crowd_goes_up_tenfold_within_a_minute():
    trace = flash(1, peak_rps=40.0)
    t, rate = trace.rate(60)
    assert np.mean(rate[t < 1800]) == pytest.approx(4.0, rel=0.1)
    assert np.mean(rate[(t >= 1860) & (t < 3000)]) == pytest.approx(40.0, rel=0.05)
    assert trace.bursts[0].start == 1800 and trace.ramp == (1800, trace.bursts[0].end)


def test_a_slow_ramp_rises_over_two_hours():
    trace = ramp(1, peak_rps=40.0)
    t, rate = trace.rate(600)
    rising = rate[(t >= 600) & (t < 600 + 7200)]
    assert rising[0] < 10 and rising[-1] > 35 and np.all(np.diff(rising) > -3)


@pytest.mark.parametrize("name", ["daynight", "burst", "step", "flash", "ramp"])
def test_built_in_shapes_peak_where_they_are_scaled(name):
    trace = make_trace(name, 2, peak_rps=30.0)
    assert trace.peak_rps() == pytest.approx(30.0, rel=0.25)
    assert trace.peak_rps(600) == pytest.approx(30.0, rel=0.1)


def test_daynight_peaks_in_the_afternoon():
    trace = daynight(1)
    t, rate = trace.rate(3600)
    assert int(np.argmax(rate)) in (15, 16) and int(np.argmin(rate)) in (3, 4)


def test_csv_round_trip_and_errors(tmp_path):
    trace = step(3, before_minutes=1, high_minutes=1, after_minutes=1)
    path = tmp_path / "t.csv"
    write_csv(trace, path)
    back = read_csv(path)
    assert np.allclose(back.arrivals, trace.arrivals, atol=1e-6)
    assert np.array_equal(back.prompt_tokens, trace.prompt_tokens)
    bad = tmp_path / "bad.csv"
    bad.write_text("time,tokens\n1,2\n")
    with pytest.raises(TraceError, match="header"):
        read_csv(bad)
    bad.write_text("arrival_seconds,prompt_tokens,max_tokens\n1,abc,3\n")
    with pytest.raises(TraceError, match=":2"):
        read_csv(bad)
