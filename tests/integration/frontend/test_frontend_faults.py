"""Triton goes away and comes back while the frontend keeps running (its own Triton, not the shared one)."""

import threading
import time

import httpx
import pytest
from frontend_harness import image_question, start_frontend

from stack.ports import free_port
from stack.triton import TritonServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_triton(tmp_path_factory):
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    server = TritonServer(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_file=str(log)
    ).start(timeout=300)
    yield server
    server.stop()


def _ask(url: str, **fields) -> httpx.Response:
    body = image_question(**{"max_tokens": 4, **fields})
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_unavailable_is_reported_clearly_and_recovery_needs_no_frontend_restart(own_triton, tmp_path_factory):
    impatient = start_frontend(own_triton, tmp_path_factory, "impatient", FRONTEND_UNAVAILABLE_RETRY_S="2")
    patient = start_frontend(own_triton, tmp_path_factory, "patient", FRONTEND_UNAVAILABLE_RETRY_S="240")
    try:
        assert _ask(impatient.url).status_code == 200

        own_triton.stop()
        for response in (_ask(impatient.url), _ask(impatient.url, stream=True)):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "server_unavailable"
        ready = httpx.get(f"{impatient.url}/readyz")
        assert ready.status_code == 503 and "not reachable" in ready.json()["reason"]
        metrics = httpx.get(f"{impatient.url}/metrics").text
        assert 'frontend_upstream_errors_total{kind="unavailable"}' in metrics
        assert 'route="/v1/chat/completions",status="503"' in metrics

        # A request sent while Triton restarts waits (retry with backoff) instead of failing.
        during_restart: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: during_restart.setdefault("r", _ask(patient.url)))
        waiting.start()
        time.sleep(1)
        own_triton.start(timeout=300)
        waiting.join(timeout=240)
        assert during_restart["r"].status_code == 200, during_restart["r"].text

        recovered = _ask(impatient.url)
        assert recovered.status_code == 200, recovered.text
        # Readiness follows the replicas' probes (one a second): ready again within a few of them.
        deadline = time.monotonic() + 10
        while httpx.get(f"{impatient.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{impatient.url}/readyz").text
            time.sleep(0.2)
    finally:
        impatient.stop()
        patient.stop()


@pytest.fixture(scope="module")
def tiny_triton(tmp_path_factory):
    """One engine slot and a queue of one: a small burst already overflows it."""
    log = tmp_path_factory.mktemp("triton") / "tiny-triton.log"
    server = TritonServer(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_file=str(log),
        parameters={"max_num_seqs": "1"}, queue_size=1,
    ).start(timeout=300)
    yield server
    server.stop()


def test_a_full_triton_queue_is_429_with_retry_after(tiny_triton, tmp_path_factory):
    frontend = start_frontend(tiny_triton, tmp_path_factory, "burst", FRONTEND_OVERLOADED_RETRY_AFTER_S="3")
    try:
        responses: list[httpx.Response] = []
        lock = threading.Lock()

        def ask() -> None:
            response = _ask(frontend.url, max_tokens=64, temperature=1.0, seed=1)
            with lock:
                responses.append(response)

        burst = [threading.Thread(target=ask) for _ in range(8)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join(timeout=240)
        statuses = sorted(r.status_code for r in responses)
        assert len(statuses) == 8
        assert set(statuses) <= {200, 429}, statuses
        assert 200 in statuses and 429 in statuses, statuses
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["Retry-After"] == "3"
        assert busy.json()["error"]["code"] == "server_busy"
        assert "queue" in busy.json()["error"]["message"].lower()
        metrics = httpx.get(f"{frontend.url}/metrics").text
        assert 'frontend_upstream_errors_total{kind="overloaded"}' in metrics
        assert _ask(frontend.url).status_code == 200
    finally:
        frontend.stop()
