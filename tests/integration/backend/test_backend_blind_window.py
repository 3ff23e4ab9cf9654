"""The blind window, through the real Triton: a full dynamic batch handed to a model whose engine is full.

Triton hands `execute` up to max_batch_size requests at once, and `execute` hands them to the engine one
by one, blocking while it is full. Those requests have left Triton's queue (its pending gauge no longer
counts them) and are not running yet: `qwen3vl_sequences_waiting` must count every one of them, or the
autoscaler's waiting signal (Triton's pending plus the model's waiting) misses them.

One sequence at most (max_num_seqs 1), and Triton's default CPU config: batches of up to 8. To make the
batch full by construction, `execute` is kept busy while the eight arrive: the engine runs a long request
(L), holds the next one (A) waiting to start, and the one after (B) blocks `execute`, so the eight queue in
Triton. When the test cancels L and A, B takes their place and `execute` receives all eight together,
which wait while B runs. The long requests end when the test cancels them: how long an answer takes is
no part of the test.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient
from triton_metrics import scrape, scrape_until

from clients.triton_stream import build_inputs, stream, user_turn
from wire_contract import MODEL_NAME

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BATCH = 8  # max_batch_size of model_repository/qwen3_vl/config.pbtxt
LONG = 2000  # tokens: more than the test ever waits for (max_new_tokens 2048)


class HeldStream:
    """A long request whose stream the test ends: the engine drops a cancelled sequence at its next step."""

    def __init__(self, url: str, name: str) -> None:
        self.first_token = threading.Event()
        self.final = threading.Event()
        self.error = None
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=self._on_response)
        inputs = build_inputs(user_turn(f"{name}: describe a cat."), max_tokens=LONG, ignore_eos=True)
        self.client.async_stream_infer(MODEL_NAME, inputs, request_id=uuid.uuid4().hex,
                                       enable_empty_final_response=True)

    def _on_response(self, result, error) -> None:
        if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
            self.error = error
            self.final.set()
        else:
            self.first_token.set()

    def cancel(self) -> None:
        if self.client is None:
            return
        # Never cancel after the final response: Triton 2.51 would then keep the request (clients/triton_stream.py).
        self.client.stop_stream(cancel_requests=not self.final.is_set())
        self.client.close()
        self.client = None


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

    def send(name: str):
        return stream(url, build_inputs(user_turn(f"{name}: describe a cat."), max_tokens=4, ignore_eos=True),
                      timeout=120)

    held = {}
    try:
        with ThreadPoolExecutor(BATCH) as pool:
            held["L"] = HeldStream(url, "L")
            assert held["L"].first_token.wait(60), "the long request should start generating"
            held["A"] = HeldStream(url, "A")
            scrape_until(metrics, lambda m: _waiting(m) >= 1)
            held["B"] = HeldStream(url, "B")
            scrape_until(metrics, lambda m: _waiting(m) >= 2)
            batch = [pool.submit(send, f"batch {i}") for i in range(BATCH)]
            queued = scrape_until(metrics, lambda m: _pending(m) == BATCH)
            # A and B inside the model, the eight in Triton's queue: everything not running is counted.
            assert (_waiting(queued), _pending(queued)) == (2, BATCH), queued

            held["L"].cancel()
            held["A"].cancel()  # B takes their place and execute receives the eight
            # B starts once they are gone; until its first token it may wait beside the eight (nine), and a
            # scrape may read the gauges half-applied (nine waiting and one running, in CI).
            assert held["B"].first_token.wait(30), f"B should start once L and A are cancelled ({held['B'].error})"
            handed = scrape_until(metrics, lambda m: (_waiting(m), _pending(m), m["qwen3vl_sequences_in_flight"])
                                  == (BATCH, 0, 1), timeout=30)
            assert not held["B"].final.is_set(), f"B should still be running while the batch waits ({held['B'].error})"
            # The eight left Triton's queue together and wait inside execute while B runs.
            assert (_waiting(handed), _pending(handed), handed["qwen3vl_sequences_in_flight"]) == (BATCH, 0, 1), handed

            held["B"].cancel()
            results = [f.result() for f in batch]
    finally:
        for request in held.values():
            request.cancel()
    assert all(r.error is None and r.completion_tokens == 4 for r in results), [r.error for r in results]
    idle = scrape_until(metrics, lambda m: _waiting(m) == 0 and m["qwen3vl_sequences_in_flight"] == 0)
    assert (_waiting(idle), _pending(idle), idle["qwen3vl_sequences_in_flight"]) == (0, 0, 0)
    assert _waiting(scrape(metrics)) == 0, "a late metric update must not bring the count back"
