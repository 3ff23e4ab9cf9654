"""A backend stub whose server is killed exits and frees its shared memory (real processes, no Triton).

A stand-in "server" process starts a stand-in "stub": a Python process with a shared-memory
region named on its command line, as Triton starts its stub, running the model's watch beside a
thread stuck for ever: waiting (as the model's threads wait for a dead server's answer), or blocked
in C while holding the GIL (as a gauge's update waits for a dead server).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from backend_python.parent_watch import SHM_DIR, SHM_PREFIX, stub_shm_regions

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
STUB = textwrap.dedent("""
    import ctypes, sys, threading
    from backend_python.parent_watch import exit_with_server
    exit_with_server()
    print("watching", flush=True)
    if sys.argv[2] == "waiting":  # not a daemon: a plain exit would wait for it
        threading.Thread(target=threading.Event().wait).start()
    else:  # a PyDLL call keeps the GIL: pause() until a signal, and no other thread runs meanwhile
        threading.Thread(target=ctypes.PyDLL(None).pause).start()
""")
SERVER = textwrap.dedent("""
    import subprocess, sys
    stub = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[4]], stderr=open(sys.argv[3], "w"))
    print(stub.pid, flush=True)
    stub.wait()
""")


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("stuck", ["waiting", "holding-the-gil"])
@pytest.mark.parametrize("reaped", [True, False], ids=["server-reaped", "server-left-a-zombie"])
def test_the_stub_exits_and_frees_its_shared_memory_when_its_server_is_killed(tmp_path, reaped, stuck):
    region = SHM_DIR / f"{SHM_PREFIX}_{uuid.uuid4()}"
    region.write_bytes(b"\0" * 4096)
    stderr = tmp_path / "stub.err"
    server = subprocess.Popen([sys.executable, "-c", SERVER, STUB, region.name, str(stderr), stuck],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        stub = int(server.stdout.readline())
        assert server.stdout.readline().strip() == "watching"
        os.kill(server.pid, signal.SIGKILL)
        if reaped:
            server.wait()
        deadline = time.monotonic() + 10
        while not _gone(stub) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(stub), "the stub outlived its server"
        assert not region.exists(), "the stub's shared memory was left behind"
        assert f"pid {server.pid}) is gone" in stderr.read_text()
    finally:
        server.kill()
        server.wait()
        region.unlink(missing_ok=True)


def test_only_the_stub_s_own_regions_are_named(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join([b"/opt/backends/python/triton_python_backend_stub", b"/models/qwen3_vl/1/model.py",
                                    f"{SHM_PREFIX}_abc-1".encode(), b"1048576", b"1048576", b"42", b""]))
    assert stub_shm_regions(cmdline) == [SHM_DIR / f"{SHM_PREFIX}_abc-1"]
    assert stub_shm_regions(tmp_path / "missing") == []


def test_the_watch_ends_when_its_stub_does():
    """The stub stays a zombie until ``run`` reaps it, which it does only once the stub's stderr, which
    the watch shares (its message goes to Triton's log), is closed: the watch must take a zombie for
    ended, or both wait for ever."""
    started = subprocess.run([sys.executable, "-c", "from backend_python.parent_watch import exit_with_server; "
                              "print(exit_with_server(interval_s=0.1).pid)"],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             check=True)
    watch = int(started.stdout)
    deadline = time.monotonic() + 5
    while not _gone(watch) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(watch), "the watch outlived the stub that ended by itself"
