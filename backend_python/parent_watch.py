"""Ends the Python backend stub when its tritonserver dies, and frees the stub's shared memory.

The stub has a watchdog of its own, but it cannot end a stub whose model threads are stuck: a
thread that was waiting for the server's answer (a response sent, a metric set, a cancellation
asked) when the server died waits for ever, one of them holding the stub's own message lock, and
the watchdog blocks on that lock. A watch thread in the stub does not help either: a gauge's update
waits for the dead server while holding the GIL (the stub keeps it through that round trip), and
no other Python thread runs again (seen in CI: a stub alive 18 minutes after its server was
killed, its metrics thread in a gauge's ``set`` and its watch thread never woken). So the watch
is a small shell process beside the stub: it reads the stub's parent from /proc twice a second (a
dead server shows at once as a new parent, even before it is reaped), and then removes the region
nobody else will and kills the stub.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region"

# sh -c WATCHDOG name SERVER_PID STUB_PID INTERVAL_S REGION...
WATCHDOG = r"""
server=$1; stub=$2; interval=$3; shift 3; regions="$*"
while :; do
    { read -r stat < "/proc/$stub/stat"; } 2>/dev/null || exit 0  # the stub has ended by itself
    set -- ${stat##*) }
    [ "$1" = Z ] && exit 0  # ended, not yet reaped
    [ "$2" = "$server" ] || break  # the stub's parent is no longer its server
    sleep "$interval"
done
[ -n "$regions" ] && rm -f $regions
echo "qwen3_vl: tritonserver (pid $server) is gone; the backend stub (pid $stub) is killed and" \
     "${regions:-no shared memory} removed" >&2
kill -9 "$stub"
"""


def stub_shm_regions(cmdline: Path = Path("/proc/self/cmdline")) -> list[Path]:
    """The shared-memory regions named on the stub's command line."""
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return []
    return [SHM_DIR / a.decode() for a in args if a.startswith(SHM_PREFIX.encode()) and b"/" not in a]


def exit_with_server(interval_s: float = 0.5) -> subprocess.Popen:
    """Start the stub's watch; it ends by itself when the stub does. Its own session: a signal to the
    stub's process group (Ctrl-C in a terminal) leaves it watching."""
    return subprocess.Popen(
        ["/bin/sh", "-c", WATCHDOG, "qwen3vl-watch", str(os.getppid()), str(os.getpid()), str(interval_s),
         *map(str, stub_shm_regions())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
