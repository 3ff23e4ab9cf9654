"""The load-aware choice of a Triton replica for one request: a pure function of what the frontend knows.

What a replica holds is this frontend's own streams on it (exact, counted as they open and
close) plus what the other clients put there: the replica's own count of sequences running,
waiting inside the model and queued in Triton, less this frontend's streams that count may hold
(those open when it was read, and those that had ended just before: the count lags). Dividing by
the replica's capacity (its `qwen3vl_max_sequences`) compares a small replica with a large one.
Without the replica's metrics it is fewest streams in flight.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica as the router sees it."""

    address: str
    ready: bool
    in_flight: int  # this frontend's streams on it now
    reported: int | None = None  # running + waiting + queued, from its metrics at the last probe
    in_flight_at_report: int = 0  # this frontend's streams that ``reported`` may hold
    capacity: int | None = None  # sequences it runs at once

    def occupancy(self) -> float:
        others = 0 if self.reported is None else max(0, self.reported - self.in_flight_at_report)
        return (self.in_flight + others) / max(1, self.capacity or 1)


def pick(replicas: Sequence[ReplicaLoad], avoid: Collection[str] = (), rng: random.Random | None = None) -> str | None:
    """The address of the least occupied replica not in ``avoid`` (ties at random); None if there is none.

    Only ready replicas are chosen while any replica is ready. When none is (Triton restarting,
    every probe failing) any replica may be tried: the request then fails fast and waits in the
    caller's retry, as it would with a single server.
    """
    any_ready = any(r.ready for r in replicas)
    pool = [r for r in replicas if r.address not in avoid and (r.ready or not any_ready)]
    if not pool:
        return None
    least = min(r.occupancy() for r in pool)
    return (rng or random).choice([r for r in pool if r.occupancy() == least]).address
