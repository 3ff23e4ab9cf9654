import pytest

from frontend import errors
from frontend.errors import (
    ERROR_TABLE,
    ImageTooLarge,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
    UpstreamCancelled,
    UpstreamDeadline,
    UpstreamInternal,
    UpstreamInvalidArgument,
    UpstreamOverloaded,
    UpstreamUnavailable,
    VideoTooLarge,
    from_grpc_status,
    from_triton_message,
    http_headers,
    openai_body,
    spec_for,
    ui_message,
)

pytestmark = pytest.mark.unit

EXPECTED = [
    (InvalidRequest, 400, "invalid_request_error", "invalid_request", None),
    (PayloadTooLarge, 413, "invalid_request_error", "payload_too_large", None),
    (ImageTooLarge, 413, "invalid_request_error", "image_too_large", None),
    (VideoTooLarge, 413, "invalid_request_error", "video_too_large", None),
    (Unauthorized, 401, "authentication_error", "invalid_api_key", None),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found", None),
    (UpstreamInvalidArgument, 400, "invalid_request_error", "invalid_argument", "invalid_argument"),
    (UpstreamOverloaded, 429, "rate_limit_error", "server_busy", "overloaded"),
    (UpstreamUnavailable, 503, "server_error", "server_unavailable", "unavailable"),
    (UpstreamDeadline, 504, "server_error", "timeout", "deadline"),
    (UpstreamCancelled, 499, "server_error", "cancelled", "cancelled"),
    (UpstreamInternal, 502, "server_error", "upstream_error", "internal"),
    (InternalError, 500, "server_error", "internal_error", None),
]


def test_every_domain_error_has_exactly_one_tested_row():
    assert {row[0] for row in EXPECTED} == set(ERROR_TABLE)
    domain = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.FrontendError)}
    assert domain - {errors.FrontendError} == set(ERROR_TABLE)


@pytest.mark.parametrize(("cls", "status", "openai_type", "code", "kind"), EXPECTED)
def test_row(cls, status, openai_type, code, kind):
    error = cls("something went wrong", param="messages")
    spec = spec_for(error)
    assert (spec.status, spec.openai_type, spec.code, spec.upstream_kind) == (status, openai_type, code, kind)
    assert openai_body(error) == {
        "error": {"message": "something went wrong", "type": openai_type, "param": "messages", "code": code}
    }
    headers = http_headers(error, retry_after_s=3)
    assert headers == ({"Retry-After": "3"} if status == 429 else {})
    assert "something went wrong" in ui_message(error)
    assert "Traceback" not in ui_message(error)


def test_upstream_kinds_are_the_metric_label_values_of_the_contract():
    kinds = {spec.upstream_kind for spec in ERROR_TABLE.values()} - {None}
    assert kinds == {"unavailable", "overloaded", "invalid_argument", "deadline", "cancelled", "internal"}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Exceeds maximum queue size", UpstreamOverloaded),
        ("Request timeout expired", UpstreamOverloaded),
        ("invalid request: temperature must be >= 0", UpstreamInvalidArgument),
        ("invalid request: image 0 could not be decoded", UpstreamInvalidArgument),
        ("unexpected inference input 'foo' for model 'qwen3_vl'", UpstreamInvalidArgument),
        ("Request for unknown model: 'qwen3_vl' is not found", UpstreamUnavailable),
        ("Model 'qwen3_vl' is not ready", UpstreamUnavailable),
        ("Server is stopping", UpstreamUnavailable),
        ("Stub process 'qwen3_vl_0_0' is not healthy.", UpstreamUnavailable),
        ("Failed to obtain the health mutex.", UpstreamUnavailable),
        ("Request was cancelled", UpstreamCancelled),
        ("CUDA out of memory in model execute", UpstreamInternal),
    ],
)
def test_errors_inside_the_stream_are_classified_by_message(message, expected):
    error = from_triton_message(message)
    assert type(error) is expected
    assert error.message == message


@pytest.mark.parametrize(
    ("status", "details", "expected"),
    [
        ("UNAVAILABLE", "failed to connect to all addresses", UpstreamUnavailable),
        ("UNAVAILABLE", "Exceeds maximum queue size", UpstreamOverloaded),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", UpstreamDeadline),
        ("INVALID_ARGUMENT", "invalid request: bad messages", UpstreamInvalidArgument),
        ("RESOURCE_EXHAUSTED", "too many", UpstreamOverloaded),
        ("CANCELLED", "Cancelled", UpstreamCancelled),
        ("INTERNAL", "boom", UpstreamInternal),
        ("UNKNOWN", "?", UpstreamInternal),
    ],
)
def test_failed_grpc_calls_are_classified_by_status(status, details, expected):
    assert type(from_grpc_status(status, details)) is expected


def test_unavailable_without_details_still_says_what_happened():
    assert from_grpc_status("UNAVAILABLE", "").message == "Triton is not reachable"
