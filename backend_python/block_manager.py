"""Which KV cache blocks each sequence holds, which are free, and which hold a reusable prefix.

Host bookkeeping only (the scheduler owns it; the tensors live in ``kv_cache.py``). A block
is ``block_size`` tokens of keys and values. A full block of a prompt is known by a hash
of every token up to its end, the images and videos those tokens stand for included, so a later
prompt that starts the same way (the next turn of a chat, a shared system prompt) takes
the block instead of computing it again. Free blocks keep their contents until they are
handed out again, least recently used first: freeing only makes a block evictable.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .prompt import VisualSpan


def block_hashes(tokens: Sequence[int], visuals: Sequence[VisualSpan], block_size: int,
                 known: Sequence[bytes] = ()) -> list[bytes]:
    """The hash of every full block of ``tokens``, continuing the chain of the ``known`` first ones.

    Each hash covers the one before it, the block's token ids and the digest of every image or video
    whose placeholder tokens the block holds: two prompts with the same text and different images (or
    videos) share no block from the first placeholder token on."""
    hashes = list(known)
    full = len(tokens) // block_size
    if len(hashes) >= full:
        return hashes[:full]
    ids = np.asarray(tokens[len(hashes) * block_size: full * block_size], dtype=np.int64)
    ends = [span.end for span in visuals]  # spans are in prompt order: a long video has hundreds
    for index in range(len(hashes), full):
        start = index * block_size
        h = hashlib.blake2b(hashes[-1] if hashes else b"", digest_size=16)
        offset = start - (full * block_size - len(ids))
        h.update(ids[offset: offset + block_size].tobytes())
        for span in visuals[bisect.bisect_right(ends, start):]:
            if span.start >= start + block_size:
                break
            h.update(span.digest)
        hashes.append(h.digest())
    return hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        self._refs = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        # Free blocks, the next to hand out first: those holding nothing reusable, then the least
        # recently used cached ones.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}

    @property
    def free(self) -> int:
        """Blocks that can be handed out now (evicting the cached prefixes they hold)."""
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def cached_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """The blocks holding the longest cached run of ``hashes``, from the first."""
        blocks = []
        if self.caching:
            for h in hashes:
                block = self._cached.get(h)
                if block is None:
                    break
                blocks.append(block)
        return blocks

    def can_take(self, new: int, reused: Sequence[int] = ()) -> bool:
        """Whether ``new`` blocks can be allocated after taking ``reused`` (free ones leave the free list)."""
        return new + sum(1 for b in reused if self._refs[b] == 0) <= len(self._free)

    def take(self, reused: Sequence[int]) -> None:
        """Share cached blocks with one more sequence."""
        for block in reused:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"{n} KV blocks asked for, {len(self._free)} free")
        blocks = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            old = self._hash[block]
            if old is not None:  # evicted: its prefix is gone
                del self._cached[old]
                self._hash[block] = None
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def release(self, blocks: Sequence[int]) -> None:
        """A sequence gives its blocks up. The last ones go first in line for eviction: a later prompt
        is likelier to share a sequence's beginning than its end."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
                if self._hash[block] is None:
                    self._free.move_to_end(block, last=False)

    def register(self, blocks: Sequence[int], hashes: Sequence[bytes]) -> None:
        """``blocks[i]`` holds the computed keys and values of the block hashed ``hashes[i]``."""
        if not self.caching:
            return
        for block, h in zip(blocks, hashes):
            if self._hash[block] is None and h not in self._cached:
                self._hash[block] = h
                self._cached[h] = block
