"""Domain errors and the one table that maps each to HTTP, OpenAI error fields and the UI.

Everything that fails in the frontend ends up as one of these exceptions; the HTTP
handlers, the SSE error events, the metrics and the chat UI all read ERROR_TABLE, so
a status code is decided in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class FrontendError(Exception):
    """Base class; `message` is safe to show to the caller."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(FrontendError):
    """The request body or a parameter is malformed or out of range."""


class PayloadTooLarge(FrontendError):
    """The HTTP request body exceeds the configured cap."""


class ImageTooLarge(FrontendError):
    """One image exceeds the per-image byte or pixel cap."""


class VideoTooLarge(FrontendError):
    """One video exceeds the per-video byte cap."""


class Unauthorized(FrontendError):
    """API keys are configured and the request carries none or a wrong one."""


class ModelNotFound(FrontendError):
    """The request names a model this frontend does not serve."""


class UpstreamInvalidArgument(FrontendError):
    """Triton rejected the request as invalid; the message is Triton's."""


class UpstreamOverloaded(FrontendError):
    """Triton's queue is full or a queued request timed out."""


class UpstreamUnavailable(FrontendError):
    """Triton cannot be reached or the model is not ready."""


class UpstreamDeadline(FrontendError):
    """The request ran past the frontend's deadline for Triton."""


class UpstreamCancelled(FrontendError):
    """The generation was cancelled (client gone or Stop pressed)."""


class UpstreamInternal(FrontendError):
    """Triton or the model failed while handling the request."""


class InternalError(FrontendError):
    """A bug in the frontend; details are logged, never sent."""


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    openai_type: str
    code: str
    upstream_kind: str | None
    ui_text: str
    retry_after: bool = False


ERROR_TABLE: dict[type[FrontendError], ErrorSpec] = {
    InvalidRequest: ErrorSpec(400, "invalid_request_error", "invalid_request", None, "Invalid request"),
    PayloadTooLarge: ErrorSpec(413, "invalid_request_error", "payload_too_large", None, "Request too large"),
    ImageTooLarge: ErrorSpec(413, "invalid_request_error", "image_too_large", None, "Image too large"),
    VideoTooLarge: ErrorSpec(413, "invalid_request_error", "video_too_large", None, "Video too large"),
    Unauthorized: ErrorSpec(401, "authentication_error", "invalid_api_key", None, "Not authorized"),
    ModelNotFound: ErrorSpec(404, "invalid_request_error", "model_not_found", None, "Unknown model"),
    UpstreamInvalidArgument: ErrorSpec(
        400, "invalid_request_error", "invalid_argument", "invalid_argument", "The model rejected the request"
    ),
    UpstreamOverloaded: ErrorSpec(
        429, "rate_limit_error", "server_busy", "overloaded", "The server is busy, try again in a moment",
        retry_after=True,
    ),
    UpstreamUnavailable: ErrorSpec(
        503, "server_error", "server_unavailable", "unavailable", "The model server is unavailable right now"
    ),
    UpstreamDeadline: ErrorSpec(504, "server_error", "timeout", "deadline", "The model took too long to answer"),
    UpstreamCancelled: ErrorSpec(499, "server_error", "cancelled", "cancelled", "Generation cancelled"),
    UpstreamInternal: ErrorSpec(502, "server_error", "upstream_error", "internal", "The model server failed"),
    InternalError: ErrorSpec(500, "server_error", "internal_error", None, "Internal error in the frontend"),
}


def spec_for(error: FrontendError) -> ErrorSpec:
    """The table row of the most specific class in the table (subclasses inherit rows)."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return ERROR_TABLE[InternalError]


def openai_body(error: FrontendError) -> dict[str, Any]:
    spec = spec_for(error)
    return {
        "error": {
            "message": error.message,
            "type": spec.openai_type,
            "param": error.param,
            "code": spec.code,
        }
    }


def http_headers(error: FrontendError, retry_after_s: int) -> dict[str, str]:
    return {"Retry-After": str(retry_after_s)} if spec_for(error).retry_after else {}


def ui_message(error: FrontendError) -> str:
    """One readable line for the chat window."""
    spec = spec_for(error)
    if error.message and error.message != spec.ui_text:
        return f"⚠️ {spec.ui_text}: {error.message}"
    return f"⚠️ {spec.ui_text}."


_OVERLOADED_MARKERS = ("exceeds maximum queue size", "request timeout expired", "queue is full")
_UNAVAILABLE_MARKERS = (
    "unknown model",
    "is not ready",
    "unavailable",
    "server is stopping",
    "shutting down",
    "failed to connect",
    "connection refused",
    # Triton's server gave up on the model's process (python_backend's health check; it may crash next):
    # the request goes to another replica if no token has come yet.
    "is not healthy",
    "failed to obtain the health mutex",
)
_INVALID_MARKERS = ("invalid", "unexpected", "expected ", "data-type", "shape", "must be", "exceeds")


def from_triton_message(message: str) -> FrontendError:
    """Classify an error that Triton reported inside the stream (it carries no status code)."""
    lower = message.lower()
    if any(marker in lower for marker in _OVERLOADED_MARKERS):
        return UpstreamOverloaded(message)
    if "cancel" in lower:
        return UpstreamCancelled(message)
    if any(marker in lower for marker in _UNAVAILABLE_MARKERS):
        return UpstreamUnavailable(message)
    if any(marker in lower for marker in _INVALID_MARKERS):
        return UpstreamInvalidArgument(message)
    return UpstreamInternal(message)


_GRPC_STATUS_TO_ERROR: dict[str, type[FrontendError]] = {
    "INVALID_ARGUMENT": UpstreamInvalidArgument,
    "OUT_OF_RANGE": UpstreamInvalidArgument,
    "UNAVAILABLE": UpstreamUnavailable,
    "DEADLINE_EXCEEDED": UpstreamDeadline,
    "RESOURCE_EXHAUSTED": UpstreamOverloaded,
    "CANCELLED": UpstreamCancelled,
    "NOT_FOUND": UpstreamUnavailable,
}


def from_grpc_status(status_name: str, details: str) -> FrontendError:
    """Classify a failed gRPC call by its status name (e.g. `UNAVAILABLE`)."""
    if status_name == "UNAVAILABLE" and any(m in details.lower() for m in _OVERLOADED_MARKERS):
        return UpstreamOverloaded(details)
    cls = _GRPC_STATUS_TO_ERROR.get(status_name, UpstreamInternal)
    if cls is UpstreamUnavailable and not details:
        details = "Triton is not reachable"
    return cls(details or status_name)
