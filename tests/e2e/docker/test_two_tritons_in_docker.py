"""Two Triton containers behind one name, as the pods behind the headless Service: the frontend finds both and both serve.

The frontend container runs with the manifest's FRONTEND_TRITON_GRPC_URL (`dns:///triton-headless:8001`):
Docker's DNS answers that name with every container that carries it, as the cluster DNS does with
every ready pod. A second Triton that joins is resolved within seconds, without a frontend restart.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from docker_stack import Service, ensure_running, wait_for_triton, wait_until

from tests.integration.backend.triton_metrics import scrape

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

MODEL = "qwen3-vl"


def served(triton: Service) -> float:
    return scrape(f"{triton.urls[8002]}/metrics").get("nv_inference_request_success_total", 0.0)


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
        before = {"first": served(triton), "second": served(second)}
        # Six at once fit two replicas of two sequences, one waiting and a queue of two each, however
        # the router splits them (the overload tests of this stack refuse more on purpose).
        statuses = ask_together(frontend, 6)
        assert statuses == [200] * 6, statuses
        gained = {"first": served(triton) - before["first"], "second": served(second) - before["second"]}
        assert gained["first"] >= 2 and gained["second"] >= 2, f"requests served per replica: {gained}"
        exported = httpx.get(f"{frontend.urls[8080]}/metrics", timeout=5).text
        replicas = {line.split('replica="')[1].split('"')[0] for line in exported.splitlines()
                    if line.startswith("frontend_upstream_requests_total{") and 'outcome="ok"' in line}
        assert len(replicas) >= 2, f"the frontend's per-replica counter names {replicas}"
    finally:
        second.save_logs("triton-second")
        second.container.stop()
    assert ask_together(frontend, 2) == [200, 200], "the first replica serves alone again"
