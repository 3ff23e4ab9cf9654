"""Two Triton containers behind one name, as the pods behind the headless Service: the frontend finds both and both serve.

The frontend container runs with the manifest's FRONTEND_TRITON_GRPC_URL (`dns:///triton-headless:8001`):
Docker's DNS answers that name with every container that carries it, as the cluster DNS does with
every ready pod. A second Triton that joins is resolved within seconds, without a frontend restart.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from docker_stack import Service, ensure_running, wait_for_triton, wait_until

from frontend.replicas import HELD
from tests.integration.backend.triton_metrics import scrape

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

MODEL = "qwen3-vl"


def served(triton: Service) -> float:
    return scrape(f"{triton.urls[8002]}/metrics").get("nv_inference_request_success_total", 0.0)


def held(triton: Service) -> float:
    """Sequences the replica runs, waits on and queues: what the frontend's router reads of it."""
    values = scrape(f"{triton.urls[8002]}/metrics")
    return sum(values.get(name, 0.0) for name in HELD)


def ask_together(frontend: Service, count: int) -> list[int]:
    statuses: list[int] = []
    body = {"model": MODEL, "max_tokens": 24, "messages": [{"role": "user", "content": "Tell me a story."}]}

    def ask() -> None:
        statuses.append(httpx.post(f"{frontend.urls[8080]}/v1/chat/completions", json=body, timeout=120).status_code)

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    return statuses


def ready_replicas(frontend: Service) -> int:
    text = httpx.get(f"{frontend.urls[8080]}/metrics", timeout=5).text
    return sum(1 for line in text.splitlines() if line.startswith("frontend_upstream_replica_ready{")
               and line.endswith(" 1.0"))


def test_two_triton_containers_resolved_by_one_name_both_serve(triton, frontend, start_triton_replica):
    ensure_running(triton)
    second = start_triton_replica()
    try:
        wait_for_triton(second)
        wait_until(lambda: ready_replicas(frontend) == 2, 30, "the frontend resolving the second replica")
        # Both idle, and probed so by the frontend (every second), before six arrive at once: the router
        # then splits them three and three, and three fit a replica of two sequences, one waiting and a
        # queue of two (the overload tests of this stack refuse more on purpose and may leave a replica
        # busy for a moment).
        wait_until(lambda: held(triton) == 0 and held(second) == 0, 60, "both replicas idle")
        time.sleep(2.5)
        before = {"first": served(triton), "second": served(second)}
        statuses = ask_together(frontend, 6)
        gained = {"first": served(triton) - before["first"], "second": served(second) - before["second"]}
        assert statuses == [200] * 6, f"statuses {statuses}, requests served per replica: {gained}"
        assert gained["first"] >= 2 and gained["second"] >= 2, f"requests served per replica: {gained}"
        exported = httpx.get(f"{frontend.urls[8080]}/metrics", timeout=5).text
        replicas = {line.split('replica="')[1].split('"')[0] for line in exported.splitlines()
                    if line.startswith("frontend_upstream_requests_total{") and 'outcome="ok"' in line}
        assert len(replicas) >= 2, f"the frontend's per-replica counter names {replicas}"
    finally:
        second.save_logs("triton-second")
        second.container.stop()
    assert ask_together(frontend, 2) == [200, 200], "the first replica serves alone again"
