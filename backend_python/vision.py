"""The vision encoder, run from the checkpoint's own weights over a batch of images.

Hugging Face's eager blocks launch some fifty kernels per layer, attention image by
image, and work out positions and interpolation weights on the device from the image
grid with host round trips: a prefill of 16 images took 64 ms on an H200, most of it
the host launching kernels. Here the grid-dependent tensors are computed on the host
(with the model's own helpers, while the decode step runs), a block's work around
attention goes through two functions that ``compile`` fuses on a GPU, and every
image of the batch is attended to in one variable-length flash-attention call. The
patch embedding, learned position table and mergers are the model's own modules;
the patch embedding's 3-D convolution, whose stride equals its kernel, is applied as
the matrix product it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
)

from .decode import packed_attention, rotary
from .prefill_graphs import LayerGraphs


def _before_attention(hidden, norm_w, norm_b, qkv_w, qkv_b, cos, sin, eps: float, heads: int):
    """LayerNorm, the fused q/k/v projection and rotary: q, k, v as (patches, heads, head_dim)."""
    patches, width = hidden.shape
    qkv = F.linear(F.layer_norm(hidden, (width,), norm_w, norm_b, eps), qkv_w, qkv_b)
    q, k, v = qkv.view(patches, 3, heads, -1).unbind(1)
    # The 2-D rotary embedding, in float32 as the model computes it.
    return rotary(q.float(), cos, sin).to(q.dtype), rotary(k.float(), cos, sin).to(k.dtype), v


def _after_attention(hidden, attended, proj_w, proj_b, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, eps: float,
                     act: nn.Module):
    """Output projection and residual, then LayerNorm, MLP and residual."""
    hidden = hidden + F.linear(attended, proj_w, proj_b)
    mlp = F.linear(act(F.linear(F.layer_norm(hidden, (hidden.shape[-1],), norm_w, norm_b, eps), fc1_w, fc1_b)),
                   fc2_w, fc2_b)
    return hidden + mlp


@dataclass(frozen=True)
class Encoded:
    """One image's (or temporal patch's) encoder output: a row per image token for the decoder's input,
    and one per deepstack layer."""

    features: torch.Tensor
    deepstack: tuple[torch.Tensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.features, *self.deepstack))


class VisionEncoder:
    def __init__(self, visual: nn.Module, compile: bool = False):
        self.visual = visual
        config = visual.config
        self.heads = config.num_heads
        self.merge = config.spatial_merge_size
        self.eps = visual.blocks[0].norm1.eps
        self.act = visual.blocks[0].mlp.act_fn
        self.blocks = [(b.norm1.weight, b.norm1.bias, b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj.weight,
                        b.attn.proj.bias, b.norm2.weight, b.norm2.bias, b.mlp.linear_fc1.weight,
                        b.mlp.linear_fc1.bias, b.mlp.linear_fc2.weight, b.mlp.linear_fc2.bias)
                       for b in visual.blocks]
        self.deepstack = dict(zip(config.deepstack_visual_indexes, visual.deepstack_merger_list))
        proj = visual.patch_embed.proj
        if proj.kernel_size != proj.stride or proj.padding != (0, 0, 0):
            raise ValueError("the patch embedding must be a convolution whose stride equals its kernel")
        self.patch_w, self.patch_b = proj.weight.view(proj.out_channels, -1), proj.bias
        self._before, self._after = _before_attention, _after_attention
        self.graphs: LayerGraphs | None = None  # see graph_blocks
        if compile:
            self._before = torch.compile(_before_attention, dynamic=True)
            self._after = torch.compile(_after_attention, dynamic=True)

    def graph_blocks(self, max_patches: int, capture: bool) -> LayerGraphs:
        """Images of up to ``max_patches`` patches in all go through captured graphs from now on (see
        prefill_graphs.py)."""
        qkv_w = self.blocks[0][2]
        width, d = qkv_w.shape[1], qkv_w.shape[0] // 3 // self.heads
        dtype = self.dtype
        # The smallest image the processor makes has 256 patches (65,536 pixels).
        self.graphs = LayerGraphs(
            "vision encoder", len(self.blocks), self._graph_before, self._graph_after, max_patches, 256,
            {"hidden": ((width,), dtype), "attended": ((self.heads * d,), dtype), "q": ((self.heads, d), dtype),
             "k": ((self.heads, d), dtype), "v": ((self.heads, d), dtype), "cos": ((1, d), torch.float32),
             "sin": ((1, d), torch.float32)}, qkv_w.device, capture)
        return self.graphs

    def _graph_before(self, block: int, rows: int) -> None:
        g = self.graphs
        n1_w, n1_b, qkv_w, qkv_b = self.blocks[block][:4]
        q, k, v = self._before(g["hidden"][:rows], n1_w, n1_b, qkv_w, qkv_b, g["cos"][:rows], g["sin"][:rows],
                               self.eps, self.heads)
        for key, value in (("q", q), ("k", k), ("v", v)):
            g[key][:rows].copy_(value)

    def _graph_after(self, block: int, rows: int) -> None:
        g = self.graphs
        proj_w, proj_b, n2_w, n2_b, fc1_w, fc1_b, fc2_w, fc2_b = self.blocks[block][4:]
        g["hidden"][:rows].copy_(self._after(g["hidden"][:rows], g["attended"][:rows], proj_w, proj_b, n2_w, n2_b,
                                             fc1_w, fc1_b, fc2_w, fc2_b, self.eps, self.act))

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_w.dtype

    def warm_up(self, device: torch.device) -> None:
        """Run once on a 6x6-patch image, so that ``compile`` happens before the first request: 36
        patches, a count the blocks' weights have in no dimension (compile keeps equal sizes equal)."""
        layout = self.layout(torch.tensor([[1, 6, 6]]), lambda t: t.to(device))
        self(torch.zeros((36, self.patch_w.shape[1]), dtype=self.dtype, device=device), layout)

    def layout(self, grid: torch.Tensor, move=lambda t: t) -> dict[str, torch.Tensor | list[int] | int]:
        """What the images' grid (``(images, 3)``, on the host) decides: rotary positions, position-table
        taps and weights, attention segments (and their bounds, kept on the host). Host work, kept off
        the device's queue; ``move`` takes each tensor to where the encoder runs."""
        visual = self.visual
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=self.merge)
        segments = get_vision_cu_seqlens(grid)
        tensors = {"positions": get_vision_position_ids(grid, self.merge), "taps": indices, "weights": weights,
                   "segments": segments}
        return {**{k: move(v) for k, v in tensors.items()}, "bounds": segments.tolist(),
                "longest": int((segments[1:] - segments[:-1]).max())}

    def __call__(self, pixels: torch.Tensor, layout: dict, between=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The merged image features (one row per image token) and the deepstack features, for
        ``pixels`` (patches, channels x patch volume) on the device; ``layout`` from ``layout`` (moved
        there too); ``between``: called after each block is enqueued."""
        visual = self.visual
        hidden = F.linear(pixels.to(self.dtype), self.patch_w, self.patch_b)
        table = (visual.pos_embed(layout["taps"]) * layout["weights"][:, :, None]).sum(1)
        hidden = hidden + table.to(hidden.dtype)
        cos, sin = visual.rotary_pos_emb(hidden, layout["positions"])
        cos, sin = cos[:, None].float(), sin[:, None].float()
        deepstack, patches = [], hidden.shape[0]
        graphs = self.graphs if self.graphs and self.graphs.bucket(patches) else None
        if graphs is not None:
            graphs.start(patches)
            for key, value in (("hidden", hidden), ("cos", cos), ("sin", sin)):
                graphs[key][:patches].copy_(value)
            hidden = graphs["hidden"][:patches]
        for index, (n1_w, n1_b, qkv_w, qkv_b, proj_w, proj_b, n2_w, n2_b, fc1_w, fc1_b, fc2_w, fc2_b) \
                in enumerate(self.blocks):
            if graphs is not None:
                graphs.run(index, 0)
                q, k, v = graphs["q"][:patches], graphs["k"][:patches], graphs["v"][:patches]
            else:
                q, k, v = self._before(hidden, n1_w, n1_b, qkv_w, qkv_b, cos, sin, self.eps, self.heads)
            attended = packed_attention(q, k, v, layout["bounds"], layout["segments"], layout["longest"],
                                        causal=False)
            if graphs is not None:
                graphs["attended"][:patches].copy_(attended.flatten(1))
                graphs.run(index, 1)
            else:
                hidden = self._after(hidden, attended.flatten(1), proj_w, proj_b, n2_w, n2_b, fc1_w, fc1_b, fc2_w,
                                     fc2_b, self.eps, self.act)
            if index in self.deepstack:
                deepstack.append(self.deepstack[index](hidden))
            if between is not None:
                between()
        return visual.merger(hidden), deepstack
