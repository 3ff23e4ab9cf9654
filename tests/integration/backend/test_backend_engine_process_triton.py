"""The engine's own process under the real Triton (the GPU config's setting): when it dies, the
requests it ran get an error and the model serves the next ones from a new engine process; with
``engine_process`` false (the CPU config's) the engine runs on a thread and answers the same."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clients.triton_stream import build_inputs, stream, user_turn

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def triton(start_triton):
    server = start_triton(parameters={"engine_process": "true"})  # the GPU config's; config.pbtxt's is false
    yield server
    server.stop()


def engine_processes(server) -> list[int]:
    """The engine processes under the server's stubs."""
    found = []
    for stub in server.child_pids():
        for task in Path(f"/proc/{stub}/task").iterdir():  # a restarted one is a child of another thread
            for child in (task / "children").read_text().split():
                if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                    found.append(int(child))
    return found


def ask(server, text, tokens, **on):
    return stream(server.grpc_url, build_inputs(user_turn(text), max_tokens=tokens, temperature=0.0,
                                                ignore_eos=True), **on)


def test_a_dead_engine_process_fails_its_requests_and_a_new_one_serves_the_next(triton):
    [engine] = engine_processes(triton)
    streaming = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(ask, triton, f"Story {i}.", 2000, on_delta=lambda _: streaming.set()) for i in range(2)]
        assert streaming.wait(60), "the requests should be streaming"
        os.kill(engine, signal.SIGKILL)
        lost = [f.result() for f in running]
    for result in lost:
        assert result.error is not None and "engine process ended (exit code -9)" in str(result.error)
    after = ask(triton, "Hello again.", 8)
    assert after.error is None and after.completion_tokens == 8
    [new] = engine_processes(triton)
    assert new != engine
    log = Path(triton.log_file).read_text(errors="replace")
    assert "engine process restarted" in log


def test_the_engine_on_a_thread_of_the_model_answers_as_in_its_own_process(triton, start_triton):
    in_process = start_triton(parameters={"engine_process": "false"})
    try:
        assert engine_processes(in_process) == []
        for text in ("Describe a cat.", "Count to five."):
            own, thread = ask(triton, text, 24), ask(in_process, text, 24)
            assert own.error is None and thread.error is None
            assert own.text == thread.text and own.completion_tokens == thread.completion_tokens == 24
    finally:
        in_process.stop()
