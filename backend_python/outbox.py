"""One thread that carries responses to the server, so the thread that hands them over (the engine's,
or the one reading the engine process's pipe) goes on at once.

Each send is a round trip to the server process. More threads keep more sends in flight, but they
also take the GIL from the engine more often: on an H100, 64 streams ran at 6,000 generated tokens/s
with one thread and 4,700 with four. Under load the thread is always behind: each stream's sink
merges what arrives while its last response waits (a response every two or three steps), and a
new stream's first token would wait behind a turn of every other stream's. A first response goes
ahead of them instead: time to first token is the figure a burst and an open loop are judged by,
and the others lose one send's time.
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol


class Deliverable(Protocol):
    def deliver(self) -> None: ...


_FIRST = object()  # in the queue: a first response waits in ``_first``


class Outbox:
    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._first: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="qwen3vl-outbox", daemon=True)
        self._thread.start()

    def put(self, sink: Deliverable, first: bool = False) -> None:
        """Have ``sink.deliver()`` called on the outbox thread; with ``first``, before those waiting."""
        if first:
            self._first.put(sink)
            self._queue.put(_FIRST)
        else:
            self._queue.put(sink)

    def close(self, timeout: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            while not self._first.empty():
                self._first.get().deliver()
            if item is None:
                return
            if item is not _FIRST:
                item.deliver()
            # Hold no sender while idle: Triton unloads the model only once every sender is released.
            item = None
