"""The platform's images as a user runs them: Triton, the frontend and Prometheus in containers.

What a user notices: a streamed answer about an image; Prometheus scraping both
services; a crashed Triton reported as an error, not a hang, and recovered from
without touching the frontend; a SIGTERM (a Kubernetes scale-down) that lets
streams in flight finish and refuses new work meanwhile; overload answered with
429 + Retry-After while memory stays bounded; nothing running as root.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import openai
import pytest
from docker_stack import (
    EXIT_TIMEOUT_S, FRONTEND_MEMORY_LIMIT, MAX_BATCH, MAX_TOKENS_LIMIT, QUEUE_SIZE, SLOTS, TRITON_MEMORY_LIMIT,
    Service, ensure_running, wait_for_triton, wait_until,
)
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

MODEL = "qwen3-vl"


def png_data_url(colour: str = "orange") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_question(**fields) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url()}},
            {"type": "text", "text": "What is in this picture?"},
        ]}],
        "max_tokens": 8,
        **fields,
    }


class Stream(threading.Thread):
    """One streamed chat completion in the background; its SSE events as they arrive."""

    def __init__(self, url: str, max_tokens: int, seed: int = 0):
        super().__init__(daemon=True)
        self.url = url
        self.body = image_question(stream=True, max_tokens=max_tokens, temperature=1.0, seed=seed)
        self.status: int | None = None
        self.events: list[object] = []
        self.failure: Exception | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=self.body,
                              timeout=httpx.Timeout(10, read=120)) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        data = line.removeprefix("data: ")
                        self.events.append(data if data == "[DONE]" else json.loads(data))
        except Exception as error:  # recorded: the test asserts on it
            self.failure = error
        finally:
            self.ended_at = time.monotonic()

    def text_chunks(self) -> int:
        return sum(1 for e in self.events if isinstance(e, dict) and e.get("choices")
                   and e["choices"][0]["delta"].get("content"))

    def errors(self) -> list[dict]:
        return [e["error"] for e in self.events if isinstance(e, dict) and "error" in e]

    def finish_reason(self) -> str | None:
        reasons = [e["choices"][0]["finish_reason"] for e in self.events
                   if isinstance(e, dict) and e.get("choices") and e["choices"][0].get("finish_reason")]
        return reasons[-1] if reasons else None


def ask(service: Service, timeout: float = 120, **fields) -> httpx.Response:
    return httpx.post(f"{service.urls[8080]}/v1/chat/completions", json=image_question(**fields), timeout=timeout)


def test_a_streamed_answer_about_an_image_through_the_openai_api(triton, frontend):
    ensure_running(triton)
    client = openai.OpenAI(base_url=f"{frontend.urls[8080]}/v1", api_key="unused", timeout=120, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url("teal")}},
            {"type": "text", "text": "Describe the picture."},
        ]}],
        max_tokens=24,
        stream=True,
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, "the answer arrives in several chunks"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_prometheus_scraped_triton_and_the_frontend(triton, frontend, prometheus):
    ensure_running(triton)
    assert ask(frontend).status_code == 200
    url = prometheus.urls[9090]

    def value(expr: str) -> float | None:
        result = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    expectations = {
        'up{job="triton"}': lambda v: v == 1,
        'up{job="frontend"}': lambda v: v == 1,
        'sum(nv_inference_request_success{model="qwen3_vl"})': lambda v: v >= 1,
        'sum(frontend_requests_total{route="/v1/chat/completions",status="200"})': lambda v: v >= 1,
        'sum(qwen3vl_generated_tokens_total)': lambda v: v >= 1,
        # A recording rule of monitoring/prometheus/rules evaluated on the scraped series.
        'sum(triton:requests:rate1m)': lambda v: v >= 0,
    }
    for expr, ok in expectations.items():
        wait_until(lambda: (v := value(expr)) is not None and ok(v), 60, f"Prometheus: {expr}", interval=1)


def test_containers_run_as_non_root_with_passing_health_checks(triton, frontend, prometheus):
    ensure_running(triton)
    for service, uid in ((triton, "1000"), (frontend, "1000"), (prometheus, None)):
        exit_code, output = service.docker.exec_run(["id", "-u"])
        assert exit_code == 0
        assert output.decode().strip() != "0", f"{service.docker.name} runs as root"
        if uid:
            assert output.decode().strip() == uid, "the uid the k8s manifests run as"
    for service in (triton, frontend):
        wait_until(lambda s=service: s.inspect()["State"]["Health"]["Status"] == "healthy", 90,
                   f"{service.docker.name} healthy", interval=2)
    assert httpx.get(f"{frontend.urls[8080]}/", timeout=30).status_code == 200, "the chat UI on a read-only root"
    exit_code, _ = frontend.docker.exec_run(
        ["python3", "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"])
    assert exit_code == 0, "the frontend image must not carry torch"


def _memory(service: Service) -> int:
    stats = service.docker.stats(stream=False)
    return int(stats["memory_stats"].get("usage", 0))


def test_overload_gets_429_with_retry_after_and_memory_stays_bounded(triton, frontend):
    ensure_running(triton)
    assert ask(frontend).status_code == 200
    baseline = {"triton": _memory(triton), "frontend": _memory(frontend)}
    peak = dict(baseline)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for name, service in (("triton", triton), ("frontend", frontend)):
                peak[name] = max(peak[name], _memory(service))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    capacity = SLOTS + MAX_BATCH + QUEUE_SIZE  # running, waiting inside the model, queued in Triton
    clients = 2 * capacity
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        response = ask(frontend, max_tokens=160, temperature=1.0, seed=seed)
        with lock:
            responses.append(response)

    burst = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in range(clients)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(timeout=180)
    done.set()
    sampler.join(timeout=30)

    statuses = [r.status_code for r in responses]
    assert len(statuses) == clients, "every client got an answer"
    assert set(statuses) <= {200, 429}, statuses
    rejected = [r for r in responses if r.status_code == 429]
    accepted = [r for r in responses if r.status_code == 200]
    assert accepted and len(accepted) <= capacity, statuses
    assert len(rejected) >= clients - capacity, statuses
    for response in rejected:
        assert response.headers["Retry-After"] == "3"
        assert response.json()["error"]["code"] == "server_busy"
    for response in accepted:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")

    assert peak["triton"] < baseline["triton"] + 1024**3 and peak["triton"] < 0.8 * TRITON_MEMORY_LIMIT, peak
    assert peak["frontend"] < baseline["frontend"] + 256 * 1024**2 and peak["frontend"] < 0.8 * FRONTEND_MEMORY_LIMIT, \
        peak
    for service in (triton, frontend):
        state = service.inspect()["State"]
        assert state["Running"] and not state["OOMKilled"] and service.inspect()["RestartCount"] == 0
    assert ask(frontend).status_code == 200, "served normally once the burst is over"


def test_a_killed_triton_ends_the_stream_with_an_error_and_the_frontend_recovers(triton, frontend):
    ensure_running(triton)
    frontend_started = frontend.inspect()["State"]["StartedAt"]
    stream = Stream(frontend.urls[8080], max_tokens=MAX_TOKENS_LIMIT)
    stream.start()
    wait_until(lambda: stream.text_chunks() >= 2, 60, "the first chunks of the stream")
    killed_at = time.monotonic()
    triton.docker.kill()  # SIGKILL: a crash, no draining
    stream.join(timeout=60)
    assert not stream.is_alive(), "the client hangs after Triton died"
    assert stream.ended_at - killed_at < 30
    assert stream.failure is None, stream.failure
    errors = stream.errors()
    assert errors, f"no error event after Triton died: {stream.events[-3:]}"
    assert errors[0]["code"] in ("server_unavailable", "upstream_error"), errors
    assert errors[0]["message"]
    assert stream.events[-1] == "[DONE]"

    refused = ask(frontend, timeout=60)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_unavailable", refused.text

    triton.docker.start()
    triton.publish_urls()
    wait_for_triton(triton)
    wait_until(lambda: ask(frontend, timeout=60).status_code == 200, 90, "the frontend answering again")
    assert frontend.inspect()["State"]["StartedAt"] == frontend_started, "the frontend recovered without a restart"


def test_sigterm_lets_streams_in_flight_finish_and_refuses_new_requests(triton, frontend):
    ensure_running(triton)
    max_tokens = 600
    streams = [Stream(frontend.urls[8080], max_tokens=max_tokens, seed=seed) for seed in range(SLOTS)]
    for stream in streams:
        stream.start()
    wait_until(lambda: all(s.text_chunks() >= 1 for s in streams), 60, "every stream under way")
    signalled_at = time.monotonic()
    triton.docker.kill(signal="SIGTERM")
    time.sleep(0.5)

    started = time.monotonic()
    refused = ask(frontend, timeout=60)
    assert time.monotonic() - started < 30, "a new request waited instead of being refused"
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "server_unavailable"
    assert any(s.is_alive() for s in streams), "streams were still running when the new request was refused"

    for stream in streams:
        stream.join(timeout=EXIT_TIMEOUT_S + 10)
    for stream in streams:
        assert not stream.is_alive() and stream.failure is None, stream.failure
        assert stream.status == 200
        assert not stream.errors(), stream.errors()
        assert stream.finish_reason() == "length", stream.events[-3:]
        assert stream.events[-1] == "[DONE]"
        assert stream.ended_at - signalled_at < EXIT_TIMEOUT_S

    wait_until(lambda: not triton.inspect()["State"]["Running"], EXIT_TIMEOUT_S + 10, "Triton to exit")
    state = triton.inspect()["State"]
    log = triton.docker.logs().decode(errors="replace").splitlines()
    shutdown = [line for line in log[next((i for i, l in enumerate(log) if "Signal (15)" in l), 0):]
                if "Timeout " not in line]
    assert state["ExitCode"] == 0, "Triton did not drain and exit cleanly:\n" + "\n".join(shutdown[-40:])
