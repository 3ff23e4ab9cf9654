"""Domain errors of the serving library and the one table that maps them onto the wire.

Triton codes are the names of ``pb_utils.TritonError`` constants, so this module
imports nothing from Triton and the table can be tested outside the server.
"""

from __future__ import annotations

from dataclasses import dataclass


class ServingError(Exception):
    """Base class: every error a client may see has a row in ``ERROR_TABLE``."""


class InvalidRequest(ServingError):
    """The request breaks the contract (malformed messages, parameter out of range)."""


class InvalidImage(InvalidRequest):
    """An image that cannot be decoded, is truncated, or is a decompression bomb."""


class InvalidVideo(InvalidRequest):
    """A video that is not in a supported container, has no video stream, or is truncated or corrupt."""


class LimitExceeded(InvalidRequest):
    """Too many images, too many pixels, a video too long, a prompt over the context window."""


class Overloaded(ServingError):
    """The engine cannot take the request now; the client should retry later."""


class Cancelled(ServingError):
    """The client cancelled the request."""


class EngineFailure(ServingError):
    """An unexpected fault inside the engine; the request is lost, the model keeps serving."""


@dataclass(frozen=True)
class WireStatus:
    triton: str  # attribute name on pb_utils.TritonError
    http: int
    grpc: str  # grpc.StatusCode member name


ERROR_TABLE: dict[type[ServingError], WireStatus] = {
    InvalidRequest: WireStatus("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    InvalidImage: WireStatus("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    InvalidVideo: WireStatus("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    LimitExceeded: WireStatus("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    Overloaded: WireStatus("UNAVAILABLE", 429, "UNAVAILABLE"),
    Cancelled: WireStatus("CANCELLED", 499, "CANCELLED"),
    EngineFailure: WireStatus("INTERNAL", 500, "INTERNAL"),
}


def wire_status(error: BaseException) -> WireStatus:
    """The row for ``error``; anything unexpected is an internal error."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return ERROR_TABLE[EngineFailure]
