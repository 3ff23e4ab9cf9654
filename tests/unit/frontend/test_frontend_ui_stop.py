"""Stop in the UI ends the generation from inside, cancelling the pending read of the stream."""

import asyncio
from contextlib import aclosing

import pytest

from frontend.generation import GenerationChunk
from frontend.ui import StopSignals, until_stopped

pytestmark = pytest.mark.unit


class _Stream:
    """Stands in for the Triton stream: a chunk every 10 ms, from chunk ``stall_at`` on one a minute (the
    model busy), and it records how it ended. A test that stops during a stall does not depend on which
    of two close timers a loaded machine's event loop runs first."""

    def __init__(self, chunks: int, stall_at: int | None = None) -> None:
        self.chunks = chunks
        self.stall_at = stall_at
        self.ended_by: str | None = None

    async def generate(self):
        try:
            for index in range(self.chunks):
                await asyncio.sleep(60 if self.stall_at is not None and index >= self.stall_at else 0.01)
                yield GenerationChunk(text=f"t{index} ", completion_tokens=index + 1)
            self.ended_by = "end"
        except asyncio.CancelledError:
            self.ended_by = "cancelled"
            raise
        except GeneratorExit:
            self.ended_by = "closed"
            raise


async def test_stop_while_the_caller_handles_a_chunk_ends_the_stream():
    stream, stop = _Stream(1000), asyncio.Event()
    received = []
    async with aclosing(stream.generate()) as chunks:
        async for chunk in until_stopped(chunks, stop):
            received.append(chunk)
            if len(received) == 3:
                stop.set()
    assert len(received) == 3
    assert stream.ended_by == "closed"


async def test_stop_while_waiting_for_a_chunk_cancels_the_pending_read():
    stream, stop = _Stream(1000, stall_at=3), asyncio.Event()
    received = []
    async for chunk in until_stopped(stream.generate(), stop):
        received.append(chunk)
        if len(received) == 3:
            asyncio.get_running_loop().call_later(0.005, stop.set)
    assert len(received) == 3
    assert stream.ended_by == "cancelled"


async def test_without_stop_every_chunk_arrives():
    stream = _Stream(5)
    received = [chunk async for chunk in until_stopped(stream.generate(), asyncio.Event())]
    assert [c.completion_tokens for c in received] == [1, 2, 3, 4, 5]
    assert stream.ended_by == "end"


async def test_stop_before_the_first_token():
    stream, stop = _Stream(1000, stall_at=0), asyncio.Event()  # a long prefill
    asyncio.get_running_loop().call_later(0.005, stop.set)
    assert [chunk async for chunk in until_stopped(stream.generate(), stop)] == []
    assert stream.ended_by == "cancelled"


def test_stop_signals_are_per_session():
    signals = StopSignals()
    mine, theirs = signals.arm("me"), signals.arm("them")
    signals.fire("me")
    assert mine.is_set() and not theirs.is_set()
    signals.disarm("me", mine)
    signals.fire("me")
    signals.fire("nobody")
    assert not theirs.is_set()
