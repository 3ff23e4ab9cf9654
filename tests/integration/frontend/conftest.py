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


@pytest.fixture
def http(frontend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=frontend.url, timeout=120) as client:
        yield client
