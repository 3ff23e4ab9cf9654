"""The blind window, through the real Triton: a full dynamic batch handed to a model whose engine is full.

Triton hands `execute` up to max_batch_size requests at once, and `execute` hands them to the engine one
by one, blocking while it is full. Those requests have left Triton's queue (its pending gauge no longer
counts them) and are not running yet: `qwen3vl_sequences_waiting` must count every one of them, or the
autoscaler's waiting signal (Triton's pending plus the model's waiting) misses them.

One sequence at most (max_num_seqs 1), and Triton's default CPU config: batches of up to 8. To make the
batch full by construction, `execute` is kept busy while the eight arrive: the engine runs a long request
(L), holds the next one (A) waiting to start, and the one after (B) blocks `execute`, so the eight queue in
Triton. When L ends, A runs, B takes A's place and `execute` receives all eight together.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from triton_metrics import scrape, scrape_until

from clients.triton_stream import build_inputs, stream, user_turn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BATCH = 8  # max_batch_size of model_repository/qwen3_vl/config.pbtxt


@pytest.fixture(scope="module")
def one_sequence_triton(start_triton):
    server = start_triton(parameters={"max_num_seqs": "1"})
    yield server
    server.stop()


def _waiting(m: dict[str, float]) -> float:
    return m["qwen3vl_sequences_waiting"]


def _pending(m: dict[str, float]) -> float:
    return m["nv_inference_pending_request_count"]


def test_every_request_of_a_dynamic_batch_counts_as_waiting_until_it_runs(one_sequence_triton):
    url, metrics = one_sequence_triton.grpc_url, one_sequence_triton.metrics_url

    def send(name: str, tokens: int, **on):
        return stream(url, build_inputs(user_turn(f"{name}: describe a cat."), max_tokens=tokens, ignore_eos=True),
                      timeout=120, **on)

    with ThreadPoolExecutor(BATCH + 3) as pool:
        long_started = threading.Event()
        first = pool.submit(send, "L", 600, on_delta=lambda _: long_started.set())
        assert long_started.wait(60), "the long request should start generating"
        a = pool.submit(send, "A", 300)
        scrape_until(metrics, lambda m: _waiting(m) >= 1)
        b = pool.submit(send, "B", 4)
        scrape_until(metrics, lambda m: _waiting(m) >= 2)
        batch = [pool.submit(send, f"batch {i}", 4) for i in range(BATCH)]
        queued = scrape_until(metrics, lambda m: _pending(m) == BATCH)
        assert not first.done(), "the long request ended before the batch queued: make it longer"
        # A and B inside the model, the eight in Triton's queue: everything not running is counted.
        assert (_waiting(queued), _pending(queued)) == (2, BATCH), queued

        first.result()
        handed = scrape_until(metrics, lambda m: _pending(m) == 0 and _waiting(m) >= BATCH, timeout=30)
        assert not a.done(), "A should still be running while the batch waits"
        # The eight left Triton's queue together and wait inside execute; B waits in the engine.
        assert (_waiting(handed), _pending(handed)) == (BATCH + 1, 0), handed

        results = [a.result(), b.result(), *(f.result() for f in batch)]
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    idle = scrape_until(metrics, lambda m: _waiting(m) == 0 and m["qwen3vl_sequences_in_flight"] == 0)
    assert (_waiting(idle), _pending(idle), idle["qwen3vl_sequences_in_flight"]) == (0, 0, 0)
    time.sleep(0.5)  # a late metric update must not bring the count back
    assert _waiting(scrape(metrics)) == 0
