"""Ends the Python backend stub when its tritonserver dies, and frees the stub's shared memory.

The stub has a watchdog of its own, but it cannot end a stub whose model threads are busy:
a thread that was waiting for the server's answer (a response sent, a metric set, a
cancellation asked) when the server died waits for ever, one of them holding the stub's
own message lock, and the watchdog blocks on that lock (seen with a server killed under
load: the stub stayed, holding its memory and /dev/shm region, until killed by hand). It
also takes an unreaped server (a zombie) for a live one. The parent's death shows at once
as a new parent process id, so this watch needs neither the server nor a lock; it exits with
``os._exit``, which ends the stuck threads too, after removing the region nobody else will.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region"
EXIT_CODE = 1


def stub_shm_regions(cmdline: Path = Path("/proc/self/cmdline")) -> list[Path]:
    """The shared-memory regions named on the stub's command line."""
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return []
    return [SHM_DIR / a.decode() for a in args if a.startswith(SHM_PREFIX.encode()) and b"/" not in a]


class ParentWatch:
    """A daemon thread that notices the parent process is gone and calls ``on_orphaned`` once."""

    def __init__(self, on_orphaned: Callable[[int], None], interval_s: float = 0.5) -> None:
        self._parent = os.getppid()
        self._on_orphaned = on_orphaned
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="parent-watch", daemon=True)

    @classmethod
    def exit_with_server(cls) -> ParentWatch:
        """The stub's watch: remove the shared memory and exit as soon as tritonserver is gone."""
        return cls(_exit_orphaned).start()

    def start(self) -> ParentWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if os.getppid() != self._parent:
                self._on_orphaned(self._parent)
                return


def _exit_orphaned(parent: int) -> None:
    regions = stub_shm_regions()
    for region in regions:
        region.unlink(missing_ok=True)
    # stderr, not logging: the server that collected the stub's log is gone.
    print(f"qwen3_vl: tritonserver (pid {parent}) is gone; the backend stub exits "
          f"and removes {', '.join(map(str, regions)) or 'no shared memory'}", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)
