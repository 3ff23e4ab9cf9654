"""Predictive pre-scaling: a daily schedule of minimum replicas learnt from history, written as KEDA
cron triggers that the simulator and kustomize read back."""

import numpy as np
import pytest

from planner.scaledobject import Schedule, ScaledObjectError, load_overlay, parse_trigger
from planner.schedule import ScheduleError, cron_triggers, daily_rate, plan, write_schedule
from planner.traffic import daynight
from pathlib import Path

pytestmark = pytest.mark.unit

OVERLAY = Path(__file__).parent / "data" / "overlay"


def test_the_daily_rate_is_the_highest_of_the_days_in_each_bin():
    times = np.array([0.0, 900.0, 86400.0, 86400.0 + 900.0])
    rates = np.array([1.0, 5.0, 3.0, 2.0])
    per_bin = daily_rate(times, rates, 900.0)
    assert per_bin[0] == 3.0 and per_bin[1] == 5.0 and per_bin[2:].max() == 0.0


def test_pods_are_scheduled_a_cold_start_ahead_of_the_load_they_carry():
    per_bin = np.zeros(96)
    per_bin[40:60] = 30.0  # 10:00-15:00 at 30 req/s
    windows = plan(per_bin, capacity=10.0, lead_seconds=1200.0, min_replicas=2, max_replicas=8, utilization=0.75)
    assert windows == [Schedule(38 * 900.0, 60 * 900.0, 4)]  # 09:30: two bins (20 min) ahead, ceil(30 / 7.5)


def test_busy_hours_across_midnight_are_one_window():
    per_bin = np.zeros(96)
    per_bin[88:] = per_bin[:4] = 30.0  # 22:00-01:00
    windows = plan(per_bin, capacity=10.0, lead_seconds=1200.0, min_replicas=2, max_replicas=8, utilization=0.75)
    assert windows == [Schedule(86 * 900.0, 4 * 900.0, 4)]
    assert [t["metadata"]["start"] for t in cron_triggers(windows)] == ["30 21 * * *"]


def test_a_schedule_that_never_ends_asks_for_a_higher_minimum_instead():
    with pytest.raises(ScheduleError, match="raise minReplicaCount"):
        plan(np.full(96, 30.0), capacity=10.0, lead_seconds=0.0, min_replicas=1, max_replicas=8)


def test_a_learnt_day_round_trips_through_cron_triggers_and_kustomize(tmp_path):
    history = daynight(7, peak_rps=40.0, trough_rps=40.0 / 12)
    windows = plan(daily_rate(*history.rate(60.0)), capacity=10.0, lead_seconds=300.0, min_replicas=1,
                   max_replicas=8)
    assert max(w.replicas for w in windows) == 5  # ceil(~44 req/s at the noisiest minute / 10)
    so, _ = load_overlay(write_schedule(windows, "triton", OVERLAY, tmp_path / "scheduled"))
    read = [t.schedule for t in so.triggers if t.type == "cron"]
    assert [(w.start // 60, w.end // 60, w.replicas) for w in read] == \
        [(w.start // 60, w.end // 60, w.replicas) for w in windows]


def test_only_daily_cron_schedules_are_modelled():
    doc = cron_triggers([Schedule(3600.0, 7200.0, 3)])[0]
    assert parse_trigger(0, doc).schedule == Schedule(3600.0, 7200.0, 3)
    doc["metadata"]["start"] = "0 8 * * 1-5"
    with pytest.raises(ScaledObjectError, match="daily cron"):
        parse_trigger(0, doc)
