"""Start and stop the frontend (`uvicorn --factory frontend.app:create_app`) as a child process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stack.process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent


class FrontendServer(ServerProcess):
    """One uvicorn process on 127.0.0.1; `env` adds FRONTEND_* settings to the current environment."""

    name = "frontend"

    def __init__(
        self,
        *,
        port: int,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        log_file: str | None = None,
    ) -> None:
        super().__init__(log_file)
        self.host = host
        self.port = port
        self.env = dict(env or {})
        self.url = f"http://{host}:{port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "--factory", "frontend.app:create_app",
            "--host", self.host, "--port", str(self.port), "--no-access-log",
        ]

    def start(self, timeout: float = 90) -> FrontendServer:
        env = {**os.environ, **self.env, "GRADIO_ANALYTICS_ENABLED": "False"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.launch(self.command(), f"{self.url}/healthz", timeout, env=env, cwd=str(REPO_ROOT))
        return self
