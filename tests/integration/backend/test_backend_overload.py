"""Overload against a deliberately small Triton (one slot, a queue of two): the bounded queue refuses the
excess at once, the accepted requests complete, and the queue signal the autoscaler reads rises and falls."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from triton_metrics import scrape, scrape_until

from clients.triton_stream import build_inputs, stream, user_turn

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_triton(start_triton):
    server = start_triton(parameters={"max_num_seqs": "1"}, queue_size=2)
    yield server
    server.stop()


def test_excess_requests_are_refused_and_the_queue_signal_rises_and_returns_to_zero(small_triton):
    """The overload is built in waves, so that it does not depend on how simultaneous arrivals are
    batched: one request takes the slot, a second waits for it inside the model (its execute blocks,
    so Triton queues whatever comes next), then a burst fills the queue of two and is refused beyond."""
    peak = {"pending": 0.0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            m = scrape(small_triton.metrics_url)
            peak["pending"] = max(peak["pending"], m["nv_inference_pending_request_count"])
            time.sleep(0.05)

    def load(i: int, tokens: int = 120, **on):
        return stream(small_triton.grpc_url, build_inputs(user_turn(f"Load {i}."), max_tokens=tokens,
                                                          ignore_eos=True), **on)

    before = scrape(small_triton.metrics_url)
    watcher = threading.Thread(target=watch)
    watcher.start()
    running = threading.Event()
    try:
        with ThreadPoolExecutor(16) as pool:
            # Long enough that the slot is still taken when the burst arrives.
            first = pool.submit(load, 0, 400, on_delta=lambda _: running.set())
            assert running.wait(30), "the first request should start generating"
            second = pool.submit(load, 1)
            waiting = scrape_until(small_triton.metrics_url, lambda m: m["qwen3vl_sequences_waiting"] >= 1)
            assert waiting["qwen3vl_sequences_waiting"] >= 1, "a request waiting for the slot shows in the model"
            results = [f.result() for f in [first, second, *[pool.submit(load, i) for i in range(2, 16)]]]
    finally:
        done.set()
        watcher.join()

    refused = [r for r in results if r.error is not None]
    served = [r for r in results if r.error is None]
    assert refused, "a queue of two cannot hold sixteen requests"
    assert all("Exceeds maximum queue size" in str(r.error) for r in refused)
    assert served and all(r.completion_tokens == (400 if r is results[0] else 120) for r in served)
    assert peak["pending"] >= 1, "requests waiting for the engine must show in Triton's queue gauge"

    time.sleep(0.5)
    after = scrape(small_triton.metrics_url)
    assert after["nv_inference_pending_request_count"] == 0
    assert after["qwen3vl_sequences_waiting"] == 0
    assert after["qwen3vl_sequences_in_flight"] == 0
    queued_us = after["nv_inference_queue_duration_us_total"] - before["nv_inference_queue_duration_us_total"]
    assert queued_us > 100_000, "served requests spent time in Triton's queue"

    # Still serving after the storm.
    assert stream(small_triton.grpc_url, build_inputs(user_turn("Alive?"), max_tokens=3)).error is None
