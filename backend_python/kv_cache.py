"""The KV cache on the device: one pool of fixed-size blocks per layer, and a block table per sequence.

Memory follows the tokens a sequence holds: nothing is reserved for the longest possible
answer and nothing is copied when a sequence ends. A block is ``(block_size, kv_heads,
head_dim)`` (a token's heads side by side), so a prefill writes its tokens and reads a
cached prefix back with one gather each. Sequences are addressed by a small ``slot``
(their row in the block tables and in the last-token buffer), which a captured decode
step takes as an input like the lengths and positions.
"""

from __future__ import annotations

import torch


class PagedKVCache:
    def __init__(self, layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, max_seqs: int, max_model_len: int):
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.block_size = block_size
        self.num_blocks = num_blocks
        # Row ``slot``: the blocks of the sequence in that slot, in order (entries past its length are stale).
        self.tables = torch.zeros((max_seqs, -(-max_model_len // block_size)), dtype=torch.int32, device=device)
        self._offsets = torch.arange(block_size, device=device)

    @staticmethod
    def bytes_per_block(layers: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * block_size * kv_heads * head_dim * torch.finfo(dtype).bits // 8

    @property
    def bytes(self) -> int:
        return 2 * sum(t.numel() * t.element_size() for t in self.keys)

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor) -> None:
        """Store tokens' keys and values ((tokens, kv_heads, head_dim) each) at flat ``index`` (block x
        block_size + offset)."""
        self.keys[layer].view(-1, *key.shape[1:]).index_copy_(0, index, key)
        self.values[layer].view(-1, *value.shape[1:]).index_copy_(0, index, value)

    def read(self, layer: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values at flat ``index`` (any shape), each with (kv_heads, head_dim) appended."""
        keys, values = self.keys[layer], self.values[layer]
        return keys.view(-1, *keys.shape[2:])[index], values.view(-1, *values.shape[2:])[index]

    def token_index(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat index of position ``positions[i]`` of the sequence in ``slots[i]`` (on the device:
        graph-capturable)."""
        blocks = self.tables[slots, torch.div(positions, self.block_size, rounding_mode="floor")]
        return blocks.long() * self.block_size + positions % self.block_size

    def span_index(self, slots: torch.Tensor, span: int) -> torch.Tensor:
        """Flat index of the first ``span`` positions (a multiple of block_size) of each slot's sequence."""
        blocks = self.tables[slots, : span // self.block_size].long()
        return (blocks[:, :, None] * self.block_size + self._offsets).view(len(slots), span)
