"""A server that fails to start says why in its error: CI keeps the error, not the server's log."""

from __future__ import annotations

import sys

import pytest

from stack.process import ExitedBeforeReady, ServerProcess

pytestmark = pytest.mark.unit

NOWHERE = "http://127.0.0.1:9/never-answers"


def start(tmp_path, script: str, timeout: float) -> ServerProcess:
    server = ServerProcess(str(tmp_path / "server.log"))
    server.launch([sys.executable, "-c", script], NOWHERE, timeout)
    return server


def test_a_server_that_exits_before_it_is_ready_shows_its_log_s_last_lines(tmp_path):
    script = "import sys\nfor i in range(30): print(f'line {i}')\nsys.exit(3)"
    with pytest.raises(ExitedBeforeReady) as failed:
        start(tmp_path, script, timeout=30)
    assert failed.value.code == 3
    message = str(failed.value)
    assert "exited with code 3" in message and "line 29" in message and "line 10" in message
    assert "line 9\n" not in message  # the last 20 lines, not the whole log


def test_a_server_that_never_answers_shows_its_log(tmp_path):
    script = "import time\nprint('loading the model', flush=True)\ntime.sleep(60)"
    with pytest.raises(TimeoutError) as failed:
        start(tmp_path, script, timeout=2)
    assert "did not answer" in str(failed.value) and "loading the model" in str(failed.value)
