"""A real frontend process in front of the session's real Triton."""

from collections.abc import Iterator

import httpx
import pytest
from frontend_harness import start_frontend

from stack.frontend import FrontendServer


@pytest.fixture(scope="session")
def frontend(triton, tmp_path_factory) -> Iterator[FrontendServer]:
    server = start_frontend(triton, tmp_path_factory, "frontend")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def long_frontend(triton, tmp_path_factory) -> Iterator[FrontendServer]:
    """Answers of seconds on CPU (1,500 tokens), for clients that leave before the end: with the
    default cap of 64 a whole answer takes about as long as such a client waits."""
    server = start_frontend(triton, tmp_path_factory, "long", FRONTEND_MAX_TOKENS_LIMIT="1500")
    yield server
    server.stop()


@pytest.fixture
def http(frontend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=frontend.url, timeout=120) as client:
        yield client
