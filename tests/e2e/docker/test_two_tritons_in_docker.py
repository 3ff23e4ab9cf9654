"""Two Triton containers behind one name, as the pods behind the headless Service: the frontend finds both and both serve.

The frontend container runs with the manifest's FRONTEND_TRITON_GRPC_URL (`dns:///triton-headless:8001`):
Docker's DNS answers that name with every container that carries it, as the cluster DNS does with
every ready pod. A second Triton that joins is resolved within seconds, without a frontend restart.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from docker_stack import QUEUE_SIZE, Service, ensure_running, wait_for_triton, wait_until
from prometheus_client.parser import text_string_to_metric_families

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
    """``count`` chat requests released at once, so that all are in flight when the router picks for each."""
    statuses: list[int] = []
    body = {"model": MODEL, "max_tokens": 24, "messages": [{"role": "user", "content": "Tell me a story."}]}
    release = threading.Barrier(count)

    def ask() -> None:
        with httpx.Client(timeout=120) as client:
            release.wait(timeout=30)
            statuses.append(client.post(f"{frontend.urls[8080]}/v1/chat/completions", json=body).status_code)

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    return statuses


def attempts(frontend: Service) -> Counter:
    """The frontend's own count of generations sent to each replica, by (replica, outcome): ok, overloaded..."""
    counts: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{frontend.urls[8080]}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "frontend_upstream_requests_total":
                counts[sample.labels["replica"], sample.labels["outcome"]] += sample.value
    return counts


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
        # Both idle, and probed so by the frontend (every second), before 2 * QUEUE_SIZE are sent at once (the
        # overload tests of this stack may leave a replica busy for a moment). Requests that arrive together
        # fit an idle replica only up to QUEUE_SIZE (docker_stack.py): six at once went three and three, and
        # one was refused by both replicas in 10 of 15 such bursts on two tritonservers. QUEUE_SIZE per replica
        # fit however the router splits them: a request refused by both needs QUEUE_SIZE others queued in each.
        wait_until(lambda: held(triton) == 0 and held(second) == 0, 60, "both replicas idle")
        time.sleep(2.5)
        count = 2 * QUEUE_SIZE
        before = {"first": served(triton), "second": served(second)}
        sent_before = attempts(frontend)
        statuses = ask_together(frontend, count)
        gained = {"first": served(triton) - before["first"], "second": served(second) - before["second"]}
        sent = dict(attempts(frontend) - sent_before)
        assert statuses == [200] * count, f"statuses {statuses}, served per replica {gained}, attempts {sent}"
        # The router counts its own streams as it picks: those in flight together go half and half.
        assert gained == {"first": QUEUE_SIZE, "second": QUEUE_SIZE}, f"served per replica {gained}, attempts {sent}"
        assert len({replica for replica, outcome in sent if outcome == "ok"}) == 2, \
            f"the frontend's per-replica counter: {sent}"
    finally:
        second.save_logs("triton-second")
        second.container.stop()
    assert ask_together(frontend, 2) == [200, 200], "the first replica serves alone again"
