"""`python -m bench.pipe`: how long a prompt's pixels take to cross the engine process's pipe while a
thread of the receiving process runs Python, as the engine thread does while it launches a step.

The stub sends each prompt (a 448×448 image's pixels are 2.4 MB in bfloat16) and waits for the engine
process's acknowledgement before the next, as ``EngineProcess.submit`` does. The receiving process
reads either with ``Connection.recv`` (a socket buffer at a time, taking the interpreter lock back
after each piece) or with the engine process's ``_Receiver`` (one blocking call per part), at Python's
default switch interval and at the engine process's. Prints a table: milliseconds per prompt.

``--handover MODEL``: the real engine process instead (a checkpoint, e.g. the tiny one of ``make
setup``): how long ``submit_many`` takes to hand a batch of prompts of one 448×448 image over (until
the engine process has taken them all), with the pixel mirror (``processor_cache_gib`` 0.5: the image
crosses once) and without (0), two engine processes taking turns.
"""

from __future__ import annotations

import argparse
import json
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


class _Sink:
    """Where a handed-over request's responses go: only its end matters here."""

    def __init__(self):
        self.done = threading.Event()

    def send(self, chunk, final):
        if final:
            self.done.set()

    def fail(self, error):
        self.done.set()

    def is_cancelled(self):
        return False

    def busy(self):
        return False


def handover(model: str, batch: int, rounds: int) -> list[dict]:
    """Milliseconds for ``submit_many`` of ``batch`` prompts (one image, one token each), per round."""
    from backend_python.config import EngineConfig, Limits
    from backend_python.engine_process import EngineProcess
    from backend_python.loader import load_processor
    from backend_python.prompt import PromptBuilder
    from backend_python.request import GenerationRequest
    from bench.gpu import image_bytes

    engines, rows = {}, []
    for budget in (0.5, 0.0):
        config = EngineConfig(model_path=model, max_num_seqs=batch, max_model_len=1024, processor_cache_gib=budget,
                              max_num_batched_tokens=max(2048, batch), image_max_pixels=448 * 448,
                              limits=Limits(max_prompt_tokens=900))
        engines[budget] = EngineProcess(config).start()
    builder = PromptBuilder(load_processor(config), config)
    messages = [{"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "What is it?"}]}]
    request = GenerationRequest.from_tensors({"messages": np.array([json.dumps(messages).encode()], dtype=np.object_),
                                              "images": np.array([image_bytes(0)], dtype=np.object_),
                                              "max_tokens": np.array([1])}, config.limits)
    prompt = builder.build(request)
    pixels = prompt.pixel_values.numel() * prompt.pixel_values.element_size()
    for round_ in range(rounds + 1):  # the first round of each is untimed
        for budget, engine in engines.items():
            sinks = [_Sink() for _ in range(batch)]
            began = time.perf_counter()
            engine.submit_many((request, prompt, sink) for sink in sinks)
            elapsed = time.perf_counter() - began
            for sink in sinks:
                sink.done.wait(60)
            if round_:
                rows.append({"pixel mirror": "on" if budget else "off", "round": str(round_),
                             "prompts": str(batch), "pixels per prompt MB": f"{pixels / 1e6:.1f}",
                             "handed over in ms": f"{1000 * elapsed:.1f}"})
                print(rows[-1], flush=True)
    for engine in engines.values():
        engine.stop(timeout=5)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=65)
    parser.add_argument("--megabytes", type=float, default=2.4)
    parser.add_argument("--handover", metavar="MODEL", help="time the real engine process's hand-over instead")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.handover:
        print(table(handover(args.handover, args.prompts, args.rounds)))
        return
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
