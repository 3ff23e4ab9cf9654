"""The garbage collector in a serving process: its start-up heap set aside, and its long pauses logged.

Once the model has started, a process holds objects that live as long as it does (the model's
modules and parameters, torch.compile's graphs and guards, the tokenizer and processor), and every
full collection walks them all, holding the interpreter lock: the engine thread launches nothing
meanwhile (142-147 ms with the tiny checkpoint on the CPU machine; in the H200 host's engine process
with the 4B model and torch.compile, 384 and 412 ms: docs/bench, 2026-12-04). Moved to the permanent
generation (``gc.freeze``) after start-up, as vLLM does after its own, they are no longer walked. A
collection over ``SLOW_S`` is logged, so that a pause the streams see can be told from the engine's work.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

SLOW_S = 0.05
_watched: list[str] = []  # the process's name, once its collections are watched


def settle(process: str) -> None:
    """After start-up: collect once, freeze what is left, and log every slow collection from now on."""
    gc.collect()
    gc.freeze()
    if _watched:  # a model loaded again in the same process
        _watched[0] = process
        return
    _watched.append(process)
    began: list[float] = []

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            began[:] = [time.perf_counter()]
        elif began:
            took = time.perf_counter() - began[0]
            if took >= SLOW_S:
                log.warning("%s: a garbage collection of generation %d took %.0f ms", _watched[0],
                            info["generation"], 1000 * took)

    gc.callbacks.append(timed)
