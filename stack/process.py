"""A server started as a child process: one way to start it, wait until it answers, and stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


class ExitedBeforeReady(RuntimeError):
    """The process ended before it answered; ``code`` is its exit status (negative: the signal)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class ServerProcess:
    """Runs in its own process group (so a signal reaches its children), logs to a file or nowhere."""

    name = "server"

    def __init__(self, log_file: str | None = None):
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self._log = None

    def launch(self, command: list[str], ready_url: str | list[str], timeout: float, *,
               env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        """Start ``command`` and return once ``ready_url`` (each of them) answers 200; fail fast if the
        process dies."""
        waiting = [ready_url] if isinstance(ready_url, str) else list(ready_url)
        self._log = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise ExitedBeforeReady(f"{self.name} exited with code {code} before it was ready"
                                        + self._log_tail(), code)
            waiting = [url for url in waiting if not self.answers(url)]
            if not waiting:
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer {', '.join(waiting)} within {timeout} s" + self._log_tail())

    def _log_tail(self, lines: int = 20) -> str:
        """The log's last lines, for a start that failed where only the error message is kept (CI)."""
        if not self.log_file or not Path(self.log_file).exists():
            return ""
        tail = Path(self.log_file).read_text(errors="replace").splitlines()[-lines:]
        return f"; the end of {self.log_file}:\n" + "\n".join(tail)

    @staticmethod
    def answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_description(self) -> str:
        """How the process ended, in words: `tritonserver (pid 12) was killed by SIGKILL`."""
        code = self.process.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"{self.name} (pid {self.process.pid}) {how}" + (f"; see {self.log_file}" if self.log_file else "")

    def child_pids(self) -> list[int]:
        """Its direct children now (Triton's Python backend stubs), from /proc."""
        if self.process is None:
            return []
        return children_of(self.process.pid)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (servers drain in-flight work), then SIGKILL to the whole group after ``timeout``."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) may hold spaces: the parent pid is the 2nd field after it.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
