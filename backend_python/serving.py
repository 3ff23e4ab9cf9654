"""What the model's process runs: the engine (in a process of its own, or on a thread here) and the
prompt builder that feeds it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from . import gc_pauses
from .config import EngineConfig
from .engine import Engine
from .engine_process import SWITCH_INTERVAL_S, EngineProcess
from .loader import load, load_processor
from .metrics import EngineMetrics
from .prompt import PromptBuilder


@dataclass
class Serving:
    engine: Engine | EngineProcess
    prompts: PromptBuilder
    summary: str  # for the ready line: where the engine runs and what its start took


def start(config: EngineConfig, metrics: EngineMetrics) -> Serving:
    began = time.monotonic()
    if config.engine_process:
        # This process builds prompts on several threads while others pass a burst's responses on; at
        # Python's default of 5 ms, a thread that lets the interpreter lock go (an image's digest, the
        # tokenizer) can wait that long to take it back. On an H200, a 64-stream burst through Triton:
        # `execute` 77 ms a request at 5 ms, 51 at 0.5 (docs/bench, 2026-12-04).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        engine = EngineProcess(config, metrics)
        engine.launch()
        # Built here while the engine process loads the model.
        processor = load_processor(config)
        started = engine.start().started
        if started.device == "cpu":  # the engine's matrix products need the cores; image ops here are small
            torch.set_num_threads(1)
        prompts = PromptBuilder(processor, config, pixel_dtype=started.dtype, metrics=metrics)
        timings, artifacts, device = started.start_timings, started.compile_artifacts, started.device
        where = f"weights {started.weights_seconds:.1f} s in the engine process (pid {engine.pid})"
        kv_blocks = started.kv_blocks_total
    else:
        loaded = load(config)
        weights = time.monotonic() - began
        prompts = PromptBuilder(loaded.processor, config, pixel_dtype=loaded.dtype, metrics=metrics)
        engine = Engine(loaded, config, metrics).start()
        timings, device, kv_blocks = engine.start_timings, loaded.device, engine.stats.kv_blocks_total
        artifacts = str(engine.compile_artifacts or "")
        where = f"weights {weights:.1f} s, engine on a thread of this process"
    gc_pauses.settle("the model's process")
    warm_ups = "".join(f", {name} warm-up {s:.1f} s" for name, s in timings.items())
    summary = (f"{config.model_path} on {device}, {config.max_num_seqs} sequences, "
               f"KV cache of {kv_blocks * config.block_size} tokens"
               + (f"; compile artifacts {artifacts}" if artifacts else "") + f" ({where}{warm_ups})")
    return Serving(engine, prompts, summary)
