"""Which Triton replica a request goes to, and where the replicas are (the pick and the discovery, no server)."""

import random
from collections import Counter

import pytest

from frontend.discovery import Targets, host_of
from frontend.replicas import REPORT_LAG_S, Replica
from frontend.routing import ReplicaLoad, pick
from frontend.settings import Settings

pytestmark = pytest.mark.unit


def test_without_replica_metrics_the_fewest_own_streams_win():
    replicas = [ReplicaLoad("a:1", True, 3), ReplicaLoad("b:1", True, 1), ReplicaLoad("c:1", True, 2)]
    assert pick(replicas) == "b:1"


def test_streams_of_other_clients_read_from_the_replica_count():
    # a holds 6 sequences of which this frontend sent none: another frontend keeps it busy.
    replicas = [ReplicaLoad("a:1", True, 0, reported=6, in_flight_at_report=0, capacity=8),
                ReplicaLoad("b:1", True, 2, reported=2, in_flight_at_report=2, capacity=8)]
    assert pick(replicas) == "b:1"


def test_own_streams_already_in_the_replica_count_are_not_counted_twice():
    own = ReplicaLoad("a:1", True, 3, reported=3, in_flight_at_report=3, capacity=8)
    assert own.occupancy() == 3 / 8
    # Two of ours ended since the count was read, one other client's stream is there.
    assert ReplicaLoad("a:1", True, 1, reported=4, in_flight_at_report=3, capacity=8).occupancy() == 2 / 8


def test_occupancy_is_relative_to_each_replica_s_capacity():
    big = ReplicaLoad("big:1", True, 8, reported=8, in_flight_at_report=8, capacity=64)
    small = ReplicaLoad("small:1", True, 3, reported=3, in_flight_at_report=3, capacity=4)
    assert pick([small, big]) == "big:1"


def test_a_replica_that_is_not_ready_gets_nothing_while_another_is_ready():
    replicas = [ReplicaLoad("draining:1", False, 0), ReplicaLoad("busy:1", True, 40)]
    assert pick(replicas) == "busy:1"
    assert pick(replicas, avoid={"busy:1"}) is None, "a request that failed on the ready one is not sent to a drain"


def test_with_no_replica_ready_any_may_be_tried():
    replicas = [ReplicaLoad("a:1", False, 0), ReplicaLoad("b:1", False, 1)]
    assert pick(replicas) == "a:1"
    assert pick(replicas, avoid={"a:1"}) == "b:1"
    assert pick(replicas, avoid={"a:1", "b:1"}) is None
    assert pick([]) is None


def test_equal_replicas_share_requests():
    rng = random.Random(7)
    replicas = [ReplicaLoad(f"r{i}:1", True, 0) for i in range(3)]
    chosen = Counter(pick(replicas, rng=rng) for _ in range(300))
    assert set(chosen) == {"r0:1", "r1:1", "r2:1"} and min(chosen.values()) > 60, chosen


def test_a_burst_spreads_evenly_when_each_pick_counts_its_stream():
    loads = {f"r{i}:1": 0 for i in range(3)}
    for _ in range(48):
        loads[pick([ReplicaLoad(a, True, n) for a, n in loads.items()])] += 1
    assert sorted(loads.values()) == [16, 16, 16]


def test_streams_that_just_ended_still_in_a_replica_s_count_are_not_taken_for_other_clients():
    """The replica applies its gauges a moment after a stream ends; a burst right after a lull must not
    go around a replica that only looks busy for that moment."""
    replica = Replica("a:1", client=None, ready=True)  # this frontend's four streams there have just ended
    for _ in range(4):
        replica.stream_ended(now=100.0)
    replica.report(held=4, capacity=8, now=100.3)  # its count still holds this frontend's four
    assert replica.load().occupancy() == 0
    # The same count long after: four streams of other clients.
    replica.report(held=4, capacity=8, now=100.0 + REPORT_LAG_S + 0.5)
    assert replica.load().occupancy() == 4 / 8
    assert not replica.ended, "ends older than the lag are forgotten"


@pytest.mark.parametrize(("url", "targets"), [
    ("127.0.0.1:8001", Targets(addresses=("127.0.0.1:8001",))),
    (" triton-a:8001, triton-b:8001 ,triton-a:8001", Targets(addresses=("triton-a:8001", "triton-b:8001"))),
    ("dns:///triton-headless:8001", Targets(dns_name="triton-headless", port=8001)),
    ("[::1]:8001", Targets(addresses=("[::1]:8001",))),
])
def test_targets_parse(url, targets):
    assert Targets.parse(url) == targets


@pytest.mark.parametrize("url", ["", "triton", "triton:http", "dns:///triton", "triton:0", ",", "triton:8001,nohost"])
def test_a_bad_triton_address_stops_the_start_with_a_clear_message(url):
    with pytest.raises(ValueError, match="triton_grpc_url") as error:
        Settings(triton_grpc_url=url)
    assert "host:port" in str(error.value)


async def test_a_name_resolves_to_every_address_with_the_port():
    assert await Targets.parse("dns:///localhost:8001").resolve() == ("127.0.0.1:8001",)
    assert await Targets.parse("a:1,b:2").resolve() == ("a:1", "b:2")
    with pytest.raises(OSError):
        await Targets.parse("dns:///no-such-replica.invalid:8001").resolve()


def test_host_of_keeps_ipv6_brackets_for_urls():
    assert host_of("10.1.2.3:8001") == "10.1.2.3" and host_of("[fd00::5]:8001") == "[fd00::5]"
