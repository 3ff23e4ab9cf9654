"""One table maps every domain error onto Triton, HTTP and gRPC; each row is checked against the real enums."""

import grpc
import pytest

from backend_python import errors

pytestmark = pytest.mark.unit

EXPECTED = {
    errors.InvalidRequest: ("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    errors.InvalidImage: ("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    errors.InvalidVideo: ("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    errors.LimitExceeded: ("INVALID_ARG", 400, "INVALID_ARGUMENT"),
    errors.Overloaded: ("UNAVAILABLE", 429, "UNAVAILABLE"),
    errors.Cancelled: ("CANCELLED", 499, "CANCELLED"),
    errors.EngineFailure: ("INTERNAL", 500, "INTERNAL"),
}

# The error codes of Triton 2.51's Python backend (pb_utils.TritonError).
TRITON_CODES = {"UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED",
                "ALREADY_EXISTS", "CANCELLED"}


@pytest.mark.parametrize("error", list(EXPECTED))
def test_each_error_has_its_row(error):
    status = errors.wire_status(error("x"))
    assert (status.triton, status.http, status.grpc) == EXPECTED[error]
    assert status.triton in TRITON_CODES
    assert hasattr(grpc.StatusCode, status.grpc)


def test_every_domain_error_is_in_the_table():
    assert set(errors.ERROR_TABLE) == set(EXPECTED)


def test_an_unexpected_exception_is_internal():
    assert errors.wire_status(KeyError("boom")).http == 500
