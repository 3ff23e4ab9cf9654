"""`python -m bench.pipe`: how long a prompt's pixels take to cross the engine process's pipe while a
thread of the receiving process runs Python, as the engine thread does while it launches a step.

The stub sends each prompt (a 448×448 image's pixels are 2.4 MB in bfloat16) and waits for the engine
process's acknowledgement before the next, as ``EngineProcess.submit`` does. The receiving process
reads either with ``Connection.recv`` (a socket buffer at a time, taking the interpreter lock back
after each piece) or with the engine process's ``_Receiver`` (one blocking call per part), at Python's
default switch interval and at the engine process's. Prints a table: milliseconds per prompt.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time

import numpy as np

from backend_python.engine_process import SWITCH_INTERVAL_S, _Receiver
from bench.stats import table


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def _receive(conn, count: int, receiver: bool, interval: float, busy: bool) -> None:
    sys.setswitchinterval(interval)
    stop = threading.Event()
    if busy:
        threading.Thread(target=_spin, args=(stop,), daemon=True).start()
    read = _Receiver(conn).recv if receiver else conn.recv
    for _ in range(count):
        conn.send(("ack", len(read()[1])))
    stop.set()


def run(count: int, megabytes: float, receiver: bool, interval: float, busy: bool) -> float:
    """Milliseconds per message, sent and acknowledged one after another."""
    context = mp.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_receive, args=(theirs, count, receiver, interval, busy))
    child.start()
    payload = ("submit", np.random.default_rng(0).bytes(int(megabytes * 1e6)))
    ours.send(payload)  # the first after the child is up, untimed
    ours.recv()
    start = time.perf_counter()
    for _ in range(count - 1):
        ours.send(payload)
        ours.recv()
    elapsed = time.perf_counter() - start
    child.join()
    return 1000 * elapsed / (count - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=65)
    parser.add_argument("--megabytes", type=float, default=2.4)
    args = parser.parse_args()
    rows = []
    for busy in (False, True):
        for receiver in (False, True):
            for interval in (0.005, SWITCH_INTERVAL_S):
                ms = run(args.prompts, args.megabytes, receiver, interval, busy)
                rows.append({"thread running Python": "yes" if busy else "no",
                             "read with": "_Receiver" if receiver else "Connection.recv",
                             "switch interval ms": f"{interval * 1000:g}", "ms per prompt": f"{ms:.1f}"})
                print(rows[-1], flush=True)
    print(f"{args.prompts - 1} prompts of {args.megabytes:g} MB, each acknowledged before the next:")
    print(table(rows))


if __name__ == "__main__":
    main()
