"""The language model's decoder layers, run from the checkpoint's own weights.

Two passes share them: the prefill of a batch of prompts (packed end to end, no
padding), and one decode step per token over the slot cache. Decoding one token per
sequence is where serving spends its time, so each weight is read once with few,
large matrix products: q/k/v and gate/up are fused into single projections (the
original modules keep working as views into the fused weights), and the decode
step's grouped-query attention packs each KV head's query heads together instead of
repeating keys and values. The prefill goes through the same functions rather than
the Hugging Face layers: their eager code launches dozens of small kernels per layer,
which made a prefill host-bound. On a GPU the two halves of a layer around attention
can be compiled (``compile``), which fuses their element-wise work (RMSNorm, rotary,
SiLU, residuals) into a few kernels.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The checkpoint's RMSNorm: in float32, scaled by its weight in the model's dtype."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as Qwen3-VL applies it (each half of the head paired with the other)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _project(hidden, norm_w, qkv_w, q_norm_w, k_norm_w, cos, sin, eps: float, hq: int, hkv: int, d: int):
    """Everything of a layer before attention: norm, fused q/k/v projection, q/k norms, rotary.

    ``hidden``: (rows, tokens, hidden); returns q (rows, hq, tokens, d), k and v (rows, hkv, tokens, d).
    Both passes call it (and ``_feed_forward``) with one token per row, a prefill's tokens as rows, so
    that they share ``torch.compile``'s graphs: a start compiles half as many. Not in 2-D: there,
    Inductor makes each residual add part of a matrix product that first copies the residual (two
    copies per layer, 2.6 % of a 64-row step on an H200)."""
    rows, tokens = hidden.shape[:2]
    q, k, v = F.linear(_rms(hidden, norm_w, eps), qkv_w).split([hq * d, hkv * d, hkv * d], dim=-1)
    q = rotary(_rms(q.view(rows, tokens, hq, d), q_norm_w, eps).transpose(1, 2), cos, sin)
    k = rotary(_rms(k.view(rows, tokens, hkv, d), k_norm_w, eps).transpose(1, 2), cos, sin)
    return q, k, v.view(rows, tokens, hkv, d).transpose(1, 2)


def _feed_forward(hidden, attended, o_w, norm_w, gate_up_w, down_w, eps: float):
    """Everything of a layer after attention (``attended``: rows, tokens, heads x d): output projection,
    residual, norm, SwiGLU MLP, residual."""
    hidden = hidden + F.linear(attended, o_w)
    gate, up = F.linear(_rms(hidden, norm_w, eps), gate_up_w).chunk(2, dim=-1)
    return hidden + F.linear(F.silu(gate) * up, down_w)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int],
                     segments: torch.Tensor, longest: int, causal: bool) -> torch.Tensor:
    """Attention of each segment (a prompt, an image) to its own tokens, for segments packed end to
    end (``q``: (tokens, heads, dim), ``k`` and ``v`` with as many heads or fewer): one
    variable-length flash-attention call on a GPU in 16 bits, segment by segment elsewhere (flash
    attention needs CUDA and 16-bit floats). ``bounds``: where each segment starts, then the end (on
    the host); ``segments``: the same on the device, as int32. The scale is the default, 1/sqrt(dim),
    as in Qwen3-VL."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, segments, segments, longest, longest, **(_varlen_causal() if causal else {}))
    return torch.cat([
        F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                       is_causal=causal, enable_gqa=True).transpose(0, 1)
        for a, b in zip(bounds, bounds[1:])])


@functools.cache
def _varlen_causal() -> dict:
    """``varlen_attn``'s keywords for causal attention with fewer key/value heads than query heads:
    its first releases spell causal ``is_causal``, torch 2.11 ``window_size=(-1, 0)`` (and takes fewer
    key/value heads as they come), torch 2.14 also asks for ``enable_gqa``."""
    from torch.nn.attention.varlen import varlen_attn

    parameters = inspect.signature(varlen_attn).parameters
    keywords: dict = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if "enable_gqa" in parameters:
        keywords["enable_gqa"] = True
    return keywords


def _fuse(modules: list[nn.Linear]) -> torch.Tensor:
    """One weight for several projections of the same input; the modules become views of it."""
    fused = torch.cat([m.weight.data for m in modules])
    offset = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(fused[offset:offset + rows], requires_grad=False)
        offset += rows
    return fused


class Decoder:
    def __init__(self, model: nn.Module, cache, compile: bool = False, exact_attention: bool = False):
        self.language = model.model.language_model
        self.lm_head = model.lm_head
        self.cache = cache
        config = model.config.text_config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        self.eps = config.rms_norm_eps
        self.layers = []
        for layer in self.language.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if any(m.bias is not None for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)):
                raise ValueError("fused decoding expects projections without bias (as in Qwen3-VL)")
            self.layers.append((
                layer.input_layernorm.weight, _fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
                attn.q_norm.weight, attn.k_norm.weight, attn.o_proj.weight,
                layer.post_attention_layernorm.weight, _fuse([mlp.gate_proj, mlp.up_proj]), mlp.down_proj.weight,
            ))
        self.scale = self.head_dim ** -0.5
        self._project, self._feed_forward = _project, _feed_forward
        self.compiled = compile
        # Each row reads its own cached length (a GPU kernel); otherwise SDPA reads ``span`` tokens per row.
        self._attention, self.kernels = None, ()
        # Batch sizes a start runs the step at: one row and any other count for compile; the exact
        # kernels also have a launch shape for many rows, which Triton compiles on first use.
        self.warm_up_rows: tuple[int, ...] = (1, 2)
        if exact_attention:
            from .attention import KERNELS, LARGE_FROM_ROWS, decode_attention

            self._attention, self.kernels = decode_attention, KERNELS
            self.warm_up_rows = (1, 2, LARGE_FROM_ROWS)
        if compile:
            self._project = torch.compile(_project, dynamic=True)
            self._feed_forward = torch.compile(_feed_forward, dynamic=True)

    @property
    def exact_attention(self) -> bool:
        return self._attention is not None

    def step(self, ids: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor, span: int,
             arange: torch.Tensor) -> torch.Tensor:
        """Logits of the next token for ``ids`` (rows, 1), reading ``span`` cached tokens per row
        (with ``exact_attention``, each row's own length instead)."""
        rows = ids.shape[0]
        hidden = self.language.embed_tokens(ids)
        cos, sin = self.language.rotary_emb(hidden, positions.view(1, rows, 1).expand(3, rows, 1))
        cos, sin = cos[:, None], sin[:, None]  # (rows, 1, 1, head_dim)
        if not self._attention:
            attend = (arange[:span][None, :] <= lengths[:, None]).view(rows, 1, 1, span)
            self.cache.bind(lengths, span)
        for index, (norm_w, qkv_w, q_norm_w, k_norm_w, o_w, post_w, gate_up_w, down_w) in enumerate(self.layers):
            q, k, v = self._project(hidden, norm_w, qkv_w, q_norm_w, k_norm_w, cos, sin, self.eps,
                                    self.heads, self.kv_heads, self.head_dim)
            # One query position: the query heads of a key/value head stand in for query positions.
            q = q.reshape(rows, self.kv_heads, -1, self.head_dim)
            if self._attention:  # writes k and v into the cache itself
                attended = self._attention(q, k, v, self.cache.keys[index], self.cache.values[index], lengths,
                                           self.scale)
            else:
                keys, values = self.cache.update(k, v, index)
                attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, scale=self.scale)
            hidden = self._feed_forward(hidden, attended.reshape(rows, 1, -1), o_w, post_w, gate_up_w, down_w,
                                        self.eps)
        return self._logits(hidden)

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor, bounds: list[int], segments: torch.Tensor,
                visual: torch.Tensor | None = None, deepstack: list[torch.Tensor] = (), between=None):
        """The logits after each prompt's last token, and every layer's keys and values ((tokens,
        kv_heads, dim) each), for prompts packed end to end.

        ``embeds``: (tokens, hidden), image features already in place; ``positions``: (3, tokens)
        rotary positions; ``bounds``: where each prompt starts, then the end (on the host);
        ``segments``: the same on the device, as int32; ``visual``: indices of the image tokens, where
        the first layers add ``deepstack``; ``between``: called after each layer is enqueued.
        """
        tokens, width = embeds.shape
        cos, sin = self.language.rotary_emb(embeds[None], positions[:, None])
        cos, sin = cos.view(tokens, 1, 1, -1), sin.view(tokens, 1, 1, -1)
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        # One token per row, as in a decode step (see ``_project``).
        hidden, layers = embeds.view(tokens, 1, width), []
        for index, (norm_w, qkv_w, q_norm_w, k_norm_w, o_w, post_w, gate_up_w, down_w) in enumerate(self.layers):
            q, k, v = self._project(hidden, norm_w, qkv_w, q_norm_w, k_norm_w, cos, sin, self.eps,
                                    self.heads, self.kv_heads, self.head_dim)
            q, k, v = q.squeeze(2), k.squeeze(2), v.squeeze(2)
            layers.append((k, v))
            attended = packed_attention(q, k, v, bounds, segments, longest, causal=True)
            hidden = self._feed_forward(hidden, attended.reshape(tokens, 1, -1), o_w, post_w, gate_up_w, down_w,
                                        self.eps)
            if index < len(deepstack):
                hidden.view(-1, width).index_add_(0, visual, deepstack[index].to(hidden.dtype))
            if between is not None:
                between()
        return self._logits(hidden[segments[1:].long() - 1]), layers

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The next token's logits, from each row's last position."""
        return self.lm_head(_rms(hidden[:, -1], self.language.norm.weight, self.eps))
