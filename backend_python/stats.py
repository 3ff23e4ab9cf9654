"""What the engine has done since it started: the numbers benchmarks read (never the engine's internals).

Counters only grow, so a reader takes a ``snapshot`` before and after what it measures and
subtracts. Written by the engine thread alone; a reader on another thread sees each field
as of some recent step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class EngineStats:
    decode_steps: int = 0
    decode_rows: int = 0  # sequences summed over decode steps
    decode_steps_in_prefill: int = 0  # launched between a prefill's layers (decode_during_prefill)
    prefills: int = 0
    prefill_chunks: int = 0  # prompt chunks over all prefills (one prefill packs several)
    graphed_prefills: int = 0  # prefills padded to a bucket of captured graphs (prefill_graph_tokens)
    prompt_tokens: int = 0  # prefilled
    cached_tokens: int = 0  # taken from the prefix cache instead
    # Images and video temporal patches whose features a prefill needed: encoded, or reused (from the
    # encoder cache, or encoded for another prompt of the same prefill).
    visuals_encoded: int = 0
    visuals_from_cache: int = 0
    preemptions: int = 0
    # Host seconds per phase of the engine loop: planning, enqueueing prefills, enqueueing decode steps,
    # waiting for the device, streaming tokens out.
    schedule: float = 0.0
    prefill: float = 0.0
    launch: float = 0.0
    wait: float = 0.0
    stream: float = 0.0
    # Gauges.
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0

    def add(self, **amounts: float) -> None:
        for name, amount in amounts.items():
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> "EngineStats":
        return dataclasses.replace(self)

    def since(self, before: "EngineStats") -> dict[str, float]:
        """Counters grown since ``before``, gauges as they are now."""
        now = dataclasses.asdict(self)
        gauges = {"kv_blocks_total", "kv_blocks_used"}
        return {k: v if k in gauges else v - getattr(before, k) for k, v in now.items()}
