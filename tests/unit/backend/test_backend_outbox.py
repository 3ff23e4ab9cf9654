"""The outbox: every response handed to it is delivered, in order, on its one thread, except that a
stream's first response goes ahead of the other streams' waiting ones."""

from __future__ import annotations

import threading

import pytest

from backend_python.outbox import Outbox

pytestmark = pytest.mark.unit


class Stream:
    """Records the order of deliveries; the one made ``slow`` holds the outbox until released."""

    def __init__(self, name: str, log: list[str], slow: threading.Event | None = None):
        self.name, self.log, self.slow, self.started = name, log, slow, threading.Event()

    def deliver(self):
        self.started.set()
        if self.slow is not None:
            self.slow.wait(10)
        self.log.append(self.name)


def sending(log: list[str], release: threading.Event) -> Outbox:
    """An outbox whose thread is busy sending a response until ``release``."""
    outbox = Outbox()
    busy = Stream("sending", log, release)
    outbox.put(busy)
    assert busy.started.wait(10)
    return outbox


def test_a_first_response_goes_ahead_of_the_responses_waiting_and_nothing_is_lost():
    log, release = [], threading.Event()
    outbox = sending(log, release)
    for i in range(5):
        outbox.put(Stream(f"next {i}", log))
    outbox.put(Stream("first", log), first=True)
    outbox.put(Stream("next 5", log))
    release.set()
    outbox.close(timeout=10)
    assert log == ["sending", "first"] + [f"next {i}" for i in range(6)]


def test_first_responses_keep_their_order_and_close_delivers_what_is_waiting():
    log, release = [], threading.Event()
    outbox = sending(log, release)
    outbox.put(Stream("later", log))
    outbox.put(Stream("first a", log), first=True)
    outbox.put(Stream("first b", log), first=True)
    release.set()
    outbox.close(timeout=10)
    assert log == ["sending", "first a", "first b", "later"]
