"""The app in-process against a Triton address that refuses connections: every path that must
answer without a model (validation, limits, keys, health, metrics, CORS) is checked here."""

import pytest
from fastapi.testclient import TestClient

from frontend.app import create_app
from frontend.settings import Settings
from frontend_samples import data_url, png_bytes

pytestmark = pytest.mark.unit

UNREACHABLE = "127.0.0.1:1"


def _client(**overrides) -> TestClient:
    settings = Settings(triton_grpc_url=UNREACHABLE, unavailable_retry_s=0.3, ui_enabled=False, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client():
    with _client(max_body_bytes=200_000, max_image_bytes=100_000, max_image_pixels=128 * 128) as test_client:
        yield test_client


def _chat(client, body, **kwargs):
    return client.post("/v1/chat/completions", json=body, **kwargs)


def _assert_openai_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_liveness_needs_nothing(client):
    assert client.get("/healthz").json() == {"status": "ok", "reason": None}


def test_readiness_says_why_triton_is_not_ready(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "not reachable" in response.json()["reason"]


def test_models_lists_the_served_name(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["qwen3-vl", "qwen3_vl"]


def test_chat_when_triton_is_down_is_503_after_bounded_retries(client):
    response = _chat(client, {"model": "qwen3-vl", "messages": [{"role": "user", "content": "hi"}]})
    _assert_openai_error(response, 503, "server_unavailable")


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "qwen3-vl"}, 400, "invalid_request", "messages"),
        ({"model": "qwen3-vl", "messages": []}, 400, "invalid_request", "messages"),
        ({"model": "qwen3-vl", "messages": [{"role": "user", "content": "x"}], "top_p": 2}, 400, "invalid_request", "top_p"),
        ({"model": "qwen3-vl", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "invalid_request", "max_tokens"),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found", "model"),
        (
            {"model": "qwen3-vl", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]},
            400, "invalid_request", "messages[0].content[0].image_url",
        ),
        (
            {"model": "qwen3-vl", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(png_bytes(200, 200))}}]}]},
            413, "image_too_large", "messages[0].content[0].image_url",
        ),
        (
            {"model": "qwen3-vl", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}]}]},
            400, "invalid_request", "messages[0].content[0].image_url",
        ),
    ],
)
def test_bad_requests_get_a_clear_openai_error(client, body, status, code, param):
    response = _chat(client, body)
    _assert_openai_error(response, status, code)
    assert response.json()["error"]["param"] == param


def test_body_that_is_not_json_is_400(client):
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    _assert_openai_error(response, 400, "invalid_request")
    assert "not valid JSON" in response.json()["error"]["message"]


def test_oversized_body_is_413_before_it_is_parsed(client):
    response = client.post("/v1/chat/completions", content=b"x" * 200_001, headers={"content-type": "application/json"})
    _assert_openai_error(response, 413, "payload_too_large")


def test_oversized_chunked_body_is_413(client):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    response = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    _assert_openai_error(response, 413, "payload_too_large")


def test_metrics_use_the_contract_names_and_move(client):
    client.get("/v1/models")
    text = client.get("/metrics").text
    for name in (
        "frontend_requests_total",
        "frontend_requests_in_flight",
        "frontend_request_duration_seconds_bucket",
        "frontend_time_to_first_token_seconds",
        "frontend_generated_tokens_total",
        "frontend_prompt_tokens_total",
        'frontend_upstream_errors_total{kind="unavailable"}',
    ):
        assert name in text, name
    assert 'frontend_requests_total{method="GET",route="/v1/models",status="200"}' in text


def test_api_keys_guard_v1_but_not_health():
    with _client(api_keys=["sesame"]) as keyed:
        _assert_openai_error(keyed.get("/v1/models"), 401, "invalid_api_key")
        _assert_openai_error(keyed.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        _assert_openai_error(
            _chat(keyed, {"model": "qwen3-vl", "messages": [{"role": "user", "content": "x"}]}), 401, "invalid_api_key"
        )
        assert keyed.get("/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
        assert keyed.get("/healthz").status_code == 200


@pytest.mark.parametrize("ui_enabled", [False, True], ids=["api-only", "with-ui"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/gradio_api/queue/join", "/config"])
def test_cors_is_off_unless_configured(ui_enabled, path):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    settings = Settings(triton_grpc_url=UNREACHABLE, ui_enabled=ui_enabled)
    with TestClient(create_app(settings)) as closed:
        assert "access-control-allow-origin" not in closed.options(path, headers=preflight).headers
        assert "access-control-allow-origin" not in closed.get(path, headers={"Origin": "https://app.example"}).headers


def test_cors_allows_only_the_configured_origins():
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with _client(cors_origins=["https://app.example"]) as opened:
        response = opened.options("/v1/chat/completions", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_api_keys_also_lock_every_ui_route_until_login():
    settings = Settings(triton_grpc_url=UNREACHABLE, api_keys=["sesame"])
    with TestClient(create_app(settings)) as ui:
        for method, path in (
            ("GET", "/config"),
            ("GET", "/gradio_api/info"),
            ("POST", "/gradio_api/queue/join"),
            ("POST", "/gradio_api/upload"),
        ):
            assert ui.request(method, path, json={}).status_code == 401, path
        assert ui.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
        assert ui.post("/login", data={"username": "me", "password": "sesame"}).json() == {"success": True}
        assert ui.get("/config").status_code == 200
