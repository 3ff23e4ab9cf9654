"""One request's state in the engine, from its hand-over to its last response."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from .decoding import TextStream
from .errors import ServingError
from .prompt import Prompt
from .request import GenerationChunk, GenerationRequest

if TYPE_CHECKING:
    from .vision import Encoded


class ResponseSink(Protocol):
    """Where a sequence's responses go (a Triton response sender, or a list in tests)."""

    def send(self, chunk: GenerationChunk, final: bool) -> None: ...
    def fail(self, error: ServingError) -> None: ...
    def is_cancelled(self) -> bool:
        """Read every step: must not wait on the client (Triton's sink reads a flag a watcher keeps)."""
        ...
    def busy(self) -> bool:
        """True while an earlier response is still on its way to the client."""
        ...


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    prompt: Prompt
    sink: ResponseSink
    text: TextStream
    seed: int
    arrival: float = field(default_factory=time.monotonic)
    # What the scheduler keeps (scheduler.py).
    tokens: list[int] = field(default_factory=list)  # the prompt, then every answer token the host has seen
    blocks: list[int] = field(default_factory=list)  # its KV cache blocks, in order
    hashes: list[bytes] = field(default_factory=list)  # of its full blocks of known tokens (prefix cache keys)
    target: int = 0  # tokens to prefill since its last admission: the prompt (and, after a preemption, its answer so far)
    computed: int = 0  # tokens whose keys and values are in the cache, or launched there
    cached: int = 0  # of the tokens to prefill, those found in the prefix cache
    slot: int = -1  # its row in the block tables and the last-token buffer while it runs
    in_flight: int = 0  # launched steps whose tokens the host has not seen yet
    started_at: float | None = None  # first admission
    # What the output processor keeps (output.py).
    scheduled: int = 0  # answer tokens launched on the device (the host has seen ``generated`` of them)
    generated: int = 0
    pending: str = ""  # text not yet sent
    last_sent: float = 0.0
    first_token_at: float | None = None
    finish_reason: str = ""
    finished: bool = False
    # What the model runner keeps: image and video features for chunks still to prefill (model_runner.py).
    features: dict[int, Encoded] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = self.prompt.input_ids.tolist()

    @property
    def prefilling(self) -> bool:
        return self.computed < self.target

    def positions(self, start: int, end: int) -> torch.Tensor:
        """Rotary positions (3, end - start) of tokens ``start:end``: the prompt's own, then one step
        further on all three axes per answer token."""
        length = self.prompt.length
        own = self.prompt.positions[:, start:min(end, length)] if start < length else None
        if end <= length:
            return own
        answer = torch.arange(max(start, length) - length, end - length) + self.prompt.next_position
        answer = answer.expand(3, -1)
        return answer if own is None else torch.cat([own, answer], dim=1)
