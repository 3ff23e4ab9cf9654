"""The engine in a process of its own (the Triton model's default): the same answers as transformers'
generate, its metrics and errors back in the caller's process, cancellation across the pipe, a new
engine process when one dies (its requests failed, none left waiting), and none left when its parent
dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from backend_samples import Sink, generate, png, tensors, tiny_checkpoint, user

from backend_python.config import EngineConfig, Limits
from backend_python.engine_process import EngineProcess, _Receiver
from backend_python.errors import EngineFailure, LimitExceeded
from backend_python.loader import load, load_processor
from backend_python.metrics import EngineMetrics
from backend_python.prompt import PromptBuilder
from backend_python.request import GenerationRequest

pytestmark = pytest.mark.unit

LIMITS = Limits(max_prompt_tokens=200, max_new_tokens=400, default_max_tokens=16)


class Recorded(EngineMetrics):
    """Counts what the engine process reports, as the Triton metrics would."""

    def __init__(self):
        self.generated, self.finishes, self.kv_total = 0, {}, None

    def generated_tokens(self, n):
        self.generated += n

    def finished(self, reason):
        self.finishes[reason] = self.finishes.get(reason, 0) + 1

    def kv_blocks(self, used, total):
        self.kv_total = total


@pytest.fixture(scope="module")
def config():
    return EngineConfig(model_path=str(tiny_checkpoint()), max_num_seqs=4, max_model_len=256, block_size=4,
                        max_num_batched_tokens=32, limits=LIMITS, image_min_pixels=32 * 32 * 4,
                        image_max_pixels=128 * 128)


@pytest.fixture(scope="module")
def metrics():
    return Recorded()


@pytest.fixture(scope="module")
def engine(config, metrics):
    engine = EngineProcess(config, metrics).start()
    yield engine
    engine.stop(timeout=5)


@pytest.fixture(scope="module")
def prompts(config):
    # As the Triton model builds them: no model in this process.
    return PromptBuilder(load_processor(config), config)


def request(text, images=(), **scalars):
    return GenerationRequest.from_tensors(tensors(user(text, len(images)), images, **scalars), LIMITS)


def submit(engine, prompts, requests, sinks=None):
    sinks = sinks or [Sink() for _ in requests]
    for r, s in zip(requests, sinks):
        engine.submit(r, prompts.build(r), s)
    return sinks


def finish(sinks, timeout=120):
    for s in sinks:
        assert s.done.wait(timeout), "no final response"
    return sinks


def test_the_pipe_reader_takes_each_message_whole_and_in_order_and_reads_a_closed_pipe_as_the_end():
    """A prompt larger than the socket's buffer, one under Connection's 16 KiB split and one over it,
    as the caller's Connection sends them."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    receiver = _Receiver(theirs)
    pixels = np.random.default_rng(0).integers(0, 255, 5_000_000, dtype=np.uint8)
    messages = [("submit", 1, pixels), ("cancel", 1), ("note", "x" * 20_000)]
    sender = threading.Thread(target=lambda: [ours.send(m) for m in messages])
    sender.start()
    got = [receiver.recv() for _ in messages]
    sender.join()
    assert got[0][:2] == ("submit", 1) and np.array_equal(got[0][2], pixels)
    assert got[1:] == messages[1:]
    ours.close()
    with pytest.raises(EOFError):
        receiver.recv()
    receiver.close()
    theirs.close()


def test_the_pipe_reader_takes_a_burst_read_at_once_whole_and_in_order_with_large_ones_between():
    """A burst's prompts arrive before the reader looks (one read takes several, and ``poll`` says there
    is more while any is left unread by ``recv``); then messages around and just over the reader's chunk."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    receiver = _Receiver(theirs)
    burst = [("submit", i, "p" * (i * 97 % 1500)) for i in range(60)]  # within the socket's buffer
    for message in burst:
        ours.send(message)
    got = []
    while receiver.poll(0.2):
        got.append(receiver.recv())
    assert got == burst
    big = np.arange(_Receiver.CHUNK, dtype=np.uint8)  # with its pickle's header, just over one chunk
    messages = [("pixels", big)] + [("submit", i, "q" * 500) for i in range(60, 120)] \
        + [("note", "x" * (_Receiver.CHUNK - 40)), ("cancel", 7)]
    sender = threading.Thread(target=lambda: [ours.send(m) for m in messages])
    sender.start()
    got = [receiver.recv() for _ in messages]
    sender.join()
    assert got[0][0] == "pixels" and np.array_equal(got[0][1], big)
    assert got[1:] == messages[1:]
    assert not receiver.poll(0.05)
    ours.close()
    receiver.close()
    theirs.close()


def test_answers_streamed_across_the_process_are_generates(config, engine, prompts, metrics):
    requests = [request("Describe the picture.", [png(64, 48)], max_tokens=12, temperature=0.0),
                request("Name three colours.", max_tokens=9, temperature=0.0),
                request("What is this?", [png(40, 90, (10, 200, 30))], max_tokens=15, temperature=0.0)]
    before = metrics.generated
    sinks = finish(submit(engine, prompts, requests))
    assert [s.error for s in sinks] == [None] * 3
    model = load(config)
    for r, s in zip(requests, sinks):
        assert s.text == generate(model, prompts.build(r), r.sampling.max_tokens)
        assert s.chunks[-1].completion_tokens == r.sampling.max_tokens and s.chunks[-1].finish_reason == "length"
        assert len(s.chunks) > 2, "the answer came in one piece, not streamed"
    deadline = time.monotonic() + 5  # the metric calls come with the responses, in order
    while metrics.generated - before < 36 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metrics.generated - before == 36
    assert metrics.finishes.get("length", 0) >= 3
    assert metrics.kv_total == engine.started.kv_blocks_total > 0


def test_an_image_sent_again_is_answered_as_the_first_time(config, engine, prompts):
    """The engine process keeps the pixels of images it was sent, so the next turns of a chat cross the
    pipe without them (prompt_transfer.py); each answer is still generate's."""
    picture = png(64, 48, (30, 120, 200))
    turns = [request("Describe the picture.", [picture], max_tokens=8, temperature=0.0),
             request("What colour is it?", [picture], max_tokens=8, temperature=0.0),
             request("Name two things in it.", [png(40, 90, (10, 200, 30)), picture], max_tokens=8,
                     temperature=0.0)]
    sinks = [finish(submit(engine, prompts, [turn]))[0] for turn in turns]
    model = load(config)
    for turn, sink in zip(turns, sinks):
        assert sink.error is None and sink.text == generate(model, prompts.build(turn), 8)


def test_should_the_pixel_mirror_ever_disagree_that_request_fails_and_the_next_is_served(engine, prompts):
    """A bug's symptom, made here by packing a prompt into the caller's side of the mirror without sending
    it: the caller then believes the engine process holds that image."""
    turn = request("Describe the picture.", [png(52, 52, (90, 90, 20))], max_tokens=3)
    prompt = prompts.build(turn)
    with engine._send_lock:
        engine._pixels.pack(prompt)
    with pytest.raises(EngineFailure, match="internal error: the engine process lacks an image"):
        engine.submit(turn, prompt, Sink())
    [sink] = finish(submit(engine, prompts, [turn]))
    assert sink.error is None and sink.chunks[-1].completion_tokens == 3


def test_a_refused_prompt_raises_in_the_caller_and_the_engine_goes_on(engine, prompts):
    too_long = request("Describe the picture.", max_tokens=400)
    with pytest.raises(LimitExceeded, match="exceeds the context of 256 tokens"):
        engine.submit(too_long, prompts.build(too_long), Sink())
    [sink] = finish(submit(engine, prompts, [request("Still there?", max_tokens=5)]))
    assert sink.error is None and sink.chunks[-1].completion_tokens == 5


def test_a_batch_handed_over_together_is_answered_but_for_the_refused_one(engine, prompts):
    """As Triton's execute hands a batch over: the prompts cross the pipe back to back; the one over the
    limit gets its error and the others their answers."""
    batch = [request("Describe the picture.", [png(64, 48)], max_tokens=7), request("Describe.", max_tokens=400),
             request("Name a colour.", max_tokens=5), request("What is this?", [png(40, 90, (10, 200, 30))], max_tokens=6)]
    sinks = [Sink() for _ in batch]
    engine.submit_many((r, prompts.build(r), s) for r, s in zip(batch, sinks))
    finish(sinks)
    assert isinstance(sinks[1].error, LimitExceeded) and "exceeds the context of 256 tokens" in str(sinks[1].error)
    assert [s.error for i, s in enumerate(sinks) if i != 1] == [None] * 3
    assert [sinks[i].chunks[-1].completion_tokens for i in (0, 2, 3)] == [7, 5, 6]


def test_a_cancelled_request_ends_early_and_its_neighbour_does_not(engine, prompts, metrics):
    cancelled, neighbour = Sink(cancel_after=2), Sink()
    submit(engine, prompts, [request("Tell a long story.", max_tokens=200, ignore_eos=True),
                             request("Count.", max_tokens=40, ignore_eos=True)], [cancelled, neighbour])
    finish([cancelled, neighbour])
    assert cancelled.chunks[-1].finish_reason == "cancelled"
    assert cancelled.chunks[-1].completion_tokens < 200
    assert neighbour.error is None and neighbour.chunks[-1].completion_tokens == 40


def test_when_the_engine_process_dies_its_requests_fail_and_a_new_one_serves_the_next(config, prompts):
    engine = EngineProcess(config).start()
    picture = png(64, 48)
    try:
        [seen] = finish(submit(engine, prompts, [request("Describe the picture.", [picture], max_tokens=3)]))
        assert seen.error is None
        sinks = submit(engine, prompts, [request("Tell a long story.", max_tokens=200, ignore_eos=True)
                                         for _ in range(3)])
        while not sinks[0].chunks:
            time.sleep(0.01)
        first = engine.pid
        os.kill(first, signal.SIGKILL)
        finish(sinks, timeout=30)
        for s in sinks:
            assert isinstance(s.error, EngineFailure) and "engine process ended (exit code -9)" in str(s.error)
        # Handed over while the new engine process starts: waits for it, then runs there (with the
        # picture's pixels: the new process holds none of the old one's).
        [later] = finish(submit(engine, prompts, [request("Anyone?", [picture], max_tokens=5)]))
        assert later.error is None and later.chunks[-1].completion_tokens == 5
        assert engine.pid != first and engine.restarts == 1
    finally:
        engine.stop(timeout=1)


def test_the_engine_process_ends_with_its_parent_even_when_that_is_killed(tmp_path, config):
    """As when the watch kills a stub whose server died: nothing else would free the GPU memory."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = {sys.path!r}
        from backend_python.config import EngineConfig
        from backend_python.engine_process import EngineProcess
        if __name__ == "__main__":
            engine = EngineProcess(EngineConfig(model_path={config.model_path!r}, max_num_seqs=2,
                                                max_model_len=64, max_num_batched_tokens=64)).start()
            print(engine.pid, flush=True)
            time.sleep(600)
    """)
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the engine process outlived its parent"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
