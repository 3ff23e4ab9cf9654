"""Processed images and videos kept by the digest of their bytes, so that a request sending them again skips
decoding, resizing and normalizing them.

An OpenAI-style chat is stateless: every turn sends the conversation's images (and videos) again.
The KV prefix cache already spares the GPU their second encoding; this spares the prompt workers
their second processing (a 1024x1024 JPEG: decoding and the processor are most of a prompt's build
time; a video: decoding its frames is). vLLM keeps a cache of processor outputs for the same reason.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


class VisualCache(Generic[V]):
    """Least recently used out first, within ``budget_bytes`` (0: keeps nothing). Shared by the prompt
    workers' threads; two that miss on the same content at once both process it, and the second
    stores it again."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        if value.nbytes > self.budget:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.budget:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
