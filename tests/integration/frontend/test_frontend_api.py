"""The OpenAI-compatible API through a real frontend process and the real Triton."""

import json
import re
import time

import httpx
import openai
import pytest

from frontend_harness import MODEL, data_url, image_question, png_bytes, start_frontend

pytestmark = pytest.mark.integration


def _sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_whole_answer_about_an_image(http):
    response = http.post("/v1/chat/completions", json=image_question())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] >= 64, "an image costs at least 64 tokens"
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streamed_answer_about_an_image_arrives_in_chunks_and_ends_with_done(http):
    with http.stream("POST", "/v1/chat/completions", json=image_question(stream=True, max_tokens=24)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert contents and all(contents), "every middle chunk carries new text"
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["usage"]["completion_tokens"] >= len(contents)


def test_openai_package_whole_and_streamed(frontend):
    client = openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Describe the colours."},
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(80, 80, "teal"))}},
    ]}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, seed=7, temperature=0.8)
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, seed=7, temperature=0.8)
    assert again.choices[0].message.content == whole.choices[0].message.content, "same seed, same answer"

    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, seed=7, temperature=0.8, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_models_list_with_the_openai_package(frontend):
    client = openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0)
    assert MODEL in [model.id for model in client.models.list()]


def test_health_and_readiness(http):
    assert http.get("/healthz").json()["status"] == "ok"
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_move_after_a_request(http):
    before = http.get("/metrics").text
    assert http.post("/v1/chat/completions", json=image_question(max_tokens=5)).status_code == 200
    after = http.get("/metrics").text
    route = {"route": "/v1/chat/completions"}
    assert _metric(after, "frontend_requests_total", status="200", **route) == (
        _metric(before, "frontend_requests_total", status="200", **route) + 1
    )
    assert _metric(after, "frontend_time_to_first_token_seconds_count", **route) == (
        _metric(before, "frontend_time_to_first_token_seconds_count", **route) + 1
    )
    assert _metric(after, "frontend_generated_tokens_total") > _metric(before, "frontend_generated_tokens_total")
    assert _metric(after, "frontend_prompt_tokens_total") >= _metric(before, "frontend_prompt_tokens_total") + 64


def _oversized_body() -> bytes:
    return json.dumps(image_question(text="x" * (3 * 1024 * 1024))).encode()


BAD_REQUESTS = [
    ("bad JSON", b'{"model": "qwen3-vl", "messages": [', 400, "invalid_request"),
    ("missing messages", {"model": MODEL}, 400, "invalid_request"),
    ("empty messages", {"model": MODEL, "messages": []}, 400, "invalid_request"),
    ("corrupt image", image_question() | {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes()[:-40])}}]}]}, 400, "invalid_request"),
    ("not an image", image_question() | {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}}]}]}, 400, "invalid_request"),
    ("image over the pixel cap", image_question() | {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(1100, 1000))}}]}]}, 413, "image_too_large"),
    ("remote URL while off", image_question() | {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/cat.png"}}]}]}, 400, "invalid_request"),
    ("temperature out of range", image_question(temperature=3), 400, "invalid_request"),
    ("top_p out of range", image_question(top_p=0), 400, "invalid_request"),
    ("max_tokens over the limit", image_question(max_tokens=65), 400, "invalid_request"),
    ("max_tokens zero", image_question(max_tokens=0), 400, "invalid_request"),
    ("unknown model", image_question(model="gpt-4o"), 404, "model_not_found"),
    ("oversized body", _oversized_body(), 413, "payload_too_large"),
]


@pytest.mark.parametrize(("case", "body", "status", "code"), BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx_and_the_next_request_succeeds(http, case, body, status, code):
    if isinstance(body, bytes):
        response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, f"{case}: {response.text}"
    error = response.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10 and "Traceback" not in error["message"]
    follow_up = http.post("/v1/chat/completions", json=image_question(max_tokens=4))
    assert follow_up.status_code == 200, follow_up.text


def test_triton_rejection_is_a_400_with_tritons_message(http):
    images = [{"type": "image_url", "image_url": {"url": data_url(png_bytes(32, 32, c))}}
              for c in ("red", "green", "blue", "white", "black")]
    response = http.post("/v1/chat/completions", json={
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": images}],
    })
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_argument"
    assert re.search(r"image", response.json()["error"]["message"], re.I)


def _cancelled_on_triton(triton) -> float:
    return _metric(httpx.get(triton.metrics_url).text, "qwen3vl_requests_finished_total", reason="cancelled")


def _wait_for_cancel_count(triton, expected: float) -> float:
    deadline = time.monotonic() + 20
    while _cancelled_on_triton(triton) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return _cancelled_on_triton(triton)


def test_client_disconnect_mid_stream_cancels_the_generation_on_triton(long_frontend, triton):
    before = _cancelled_on_triton(triton)
    with httpx.Client(base_url=long_frontend.url, timeout=60) as client:
        body = image_question(stream=True, max_tokens=1500, temperature=1.0, seed=3)
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            received = [line for _, line in zip(range(4), response.iter_lines())]
            assert any(line.startswith("data: ") for line in received)
    assert _wait_for_cancel_count(triton, before + 1) == before + 1
    frontend_metrics = httpx.get(f"{long_frontend.url}/metrics").text
    assert _metric(frontend_metrics, "frontend_upstream_errors_total", kind="cancelled") >= 1


def test_client_giving_up_on_a_whole_answer_cancels_it_on_triton(long_frontend, triton):
    before = _cancelled_on_triton(triton)
    body = image_question(max_tokens=1500, temperature=1.0, seed=4)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{long_frontend.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.4))
    assert _wait_for_cancel_count(triton, before + 1) == before + 1


def test_api_keys_are_enforced_when_set(triton, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("file-key\n")
    server = start_frontend(triton, tmp_path_factory, "keyed", FRONTEND_API_KEYS="env-key",
                            FRONTEND_API_KEYS_FILE=str(keys))
    try:
        anonymous = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        assert httpx.post(f"{server.url}/v1/chat/completions", json=image_question()).status_code == 401
        for key in ("env-key", "file-key"):
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            answer = client.chat.completions.create(model=MODEL, messages=image_question()["messages"], max_tokens=3)
            assert answer.usage.completion_tokens >= 1
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.post(f"{server.url}/gradio_api/queue/join", json={}).status_code == 401
    finally:
        server.stop()


def test_deadline_is_504(triton, tmp_path_factory):
    server = start_frontend(triton, tmp_path_factory, "hasty", FRONTEND_REQUEST_TIMEOUT_S="0.5",
                            FRONTEND_MAX_TOKENS_LIMIT="1500")
    try:
        body = image_question(max_tokens=1500, temperature=1.0, seed=5)  # seconds of work against a 0.5 s deadline
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "timeout"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert _metric(metrics, "frontend_upstream_errors_total", kind="deadline") == 1
    finally:
        server.stop()
