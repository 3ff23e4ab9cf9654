"""Start and stop the frontend (`uvicorn --factory frontend.app:create_app`) as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class FrontendServer:
    """One uvicorn process on 127.0.0.1; `env` adds FRONTEND_* settings to the current environment."""

    def __init__(
        self,
        *,
        port: int,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        log_file: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.env = dict(env or {})
        self.log_file = log_file
        self.url = f"http://{host}:{port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "--factory", "frontend.app:create_app",
            "--host", self.host, "--port", str(self.port), "--no-access-log",
        ]

    def start(self, timeout: float = 90) -> FrontendServer:
        env = {**os.environ, **self.env, "GRADIO_ANALYTICS_ENABLED": "False"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._log = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115
        self._process = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"frontend exited with code {self._process.returncode} before /healthz answered"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"frontend did not answer {self.url}/healthz within {timeout} s")

    def stop(self, timeout: float = 20) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> FrontendServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
