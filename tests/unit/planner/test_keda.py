"""KEDA's own rules: activation between 0 and 1, cooldown, fallback, metric types."""

import math
from dataclasses import replace

import pytest

from planner.keda import KedaAutoscaler
from planner.scaledobject import Fallback, ScaledObjectSpec, Trigger

pytestmark = pytest.mark.unit

QUEUE = Trigger("queue-time", "prometheus", "queue_time", "Value", 0.5, activation_threshold=0.05)
PENDING = Trigger("pending", "prometheus", "pending", "AverageValue", 4.0, activation_threshold=1.0)


class FakeCluster:
    """Stands in for the simulated cluster: fixed replica counts and query results."""

    def __init__(self, replicas, values, ready=None):
        self.replicas = replicas
        self.values = values
        self.ready = replicas if ready is None else ready

    def spec_replicas(self):
        return self.replicas

    def status_replicas(self):
        return self.replicas

    def ready_replicas(self):
        return self.ready

    def query(self, signal):
        return self.values.get(signal)

    def cpu_utilization(self):
        return [], 0, 0


def spec(**kw):
    base = ScaledObjectSpec(name="triton", triggers=(QUEUE, PENDING), min_replica_count=0, max_replica_count=10,
                            polling_interval=15, cooldown_period=300)
    return replace(base, **kw)


def test_activation_from_zero_to_one_above_the_activation_threshold():
    keda = KedaAutoscaler(spec())
    assert keda.poll(0, FakeCluster(0, {"queue_time": 0.0, "pending": 0.0})) is None
    decision = keda.poll(15, FakeCluster(0, {"queue_time": 0.0, "pending": 2.0}))
    assert decision.replicas == 1


def test_activation_goes_to_min_replica_count_when_it_is_above_one():
    keda = KedaAutoscaler(spec(min_replica_count=2))
    assert keda.poll(0, FakeCluster(0, {"queue_time": 0.2, "pending": 0.0})).replicas == 2


def test_scale_to_zero_only_after_the_cooldown():
    keda = KedaAutoscaler(spec())
    keda.poll(0, FakeCluster(1, {"queue_time": 0.3, "pending": 3.0}))
    idle = FakeCluster(1, {"queue_time": 0.0, "pending": 0.0})
    assert keda.poll(150, idle) is None
    assert keda.poll(299, idle) is None
    assert keda.poll(300, idle).replicas == 0


def test_the_hpa_does_nothing_at_zero_replicas():
    keda = KedaAutoscaler(spec())
    assert keda.sync(0, FakeCluster(0, {"queue_time": 5.0, "pending": 100.0})) is None


def test_hpa_sync_takes_the_highest_trigger():
    keda = KedaAutoscaler(spec())
    # queue time 1.0 / 0.5 on 2 ready pods -> 4; pending 20 / 4 -> 5.
    assert keda.proposals(FakeCluster(2, {"queue_time": 1.0, "pending": 20.0})) == [4, 5]
    assert keda.sync(0, FakeCluster(2, {"queue_time": 1.0, "pending": 20.0})).replicas == 5


def test_empty_query_result_counts_as_zero():
    keda = KedaAutoscaler(spec())
    assert keda.proposals(FakeCluster(3, {"queue_time": math.nan, "pending": math.nan})) == [0, 0]


def test_empty_query_result_is_a_failure_without_ignore_null_values():
    strict = tuple(replace(t, ignore_null_values=False) for t in (QUEUE, PENDING))
    keda = KedaAutoscaler(spec(triggers=strict, fallback=Fallback(failure_threshold=3, replicas=6)))
    empty = FakeCluster(2, {"queue_time": math.nan, "pending": math.nan})
    for _ in range(3):
        assert keda.proposals(empty) == [None, None]
    assert keda.proposals(empty) == [None, 6]
    # A number resets the count: the signal is back.
    assert keda.proposals(FakeCluster(2, {"queue_time": 0.0, "pending": 0.0})) == [0, 0]


def test_fallback_after_failure_threshold_for_average_value_only():
    keda = KedaAutoscaler(spec(fallback=Fallback(failure_threshold=3, replicas=6)))
    down = FakeCluster(2, {})
    for _ in range(3):
        assert keda.proposals(down) == [None, None]
    # Fourth failure passes the threshold: AverageValue gets fallback.replicas * threshold, Value stays failed.
    assert keda.proposals(down) == [None, 6]


def test_fallback_scales_up_through_the_hpa():
    keda = KedaAutoscaler(spec(fallback=Fallback(failure_threshold=1, replicas=6)))
    down = FakeCluster(2, {})
    keda.sync(0, down)
    assert keda.sync(15, down).replicas == 6
