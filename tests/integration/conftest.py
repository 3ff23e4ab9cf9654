"""The real Triton server on free ports, serving the tiny local checkpoint, shared by the integration tests."""

from __future__ import annotations

import os
import tempfile

import pytest

from stack.ports import free_port
from stack.triton import TritonServer


def _start(**kwargs) -> TritonServer:
    log = tempfile.NamedTemporaryFile(prefix="triton-", suffix=".log", delete=False).name
    server = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          log_file=log, **kwargs)
    return server.start(timeout=float(os.environ.get("TRITON_START_TIMEOUT", "300")))


@pytest.fixture(scope="session")
def triton():
    """One Triton for the session, with the default model configuration."""
    server = _start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def start_triton():
    """Start another Triton on free ports, e.g. ``start_triton(parameters={"max_num_seqs": "1"}, queue_size=2)``."""
    return _start
