"""The language model's decoder layers, run from the checkpoint's own weights.

Two passes share them: the prefill of a batch of prompts, and one decode step per
token over the slot cache. Decoding one token per sequence is where serving spends
its time, so each weight is read once with few, large matrix products: q/k/v and
gate/up are fused into single projections (the original modules keep working as
views into the fused weights), and the decode step's grouped-query attention packs
each KV head's query heads together instead of repeating keys and values. The
prefill goes through the same functions rather than the Hugging Face layers: their
eager code launches dozens of small kernels per layer, which made a prefill
host-bound. On a GPU the two halves of a layer around attention can be compiled
(``compile``), which fuses their element-wise work (RMSNorm, rotary, SiLU,
residuals) into a few kernels.
"""

from __future__ import annotations

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

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor,
                visual: torch.Tensor | None = None, deepstack: list[torch.Tensor] = ()):
        """The last position's logits, and every layer's keys and values, for a left-padded batch.

        ``embeds``: (rows, tokens, hidden), image features already in place; ``positions``: (3, rows,
        tokens) rotary positions; ``padding``: (rows, tokens), true on prompt tokens; ``visual``: flat
        indices of the image tokens in (rows x tokens), where the first layers add ``deepstack``.
        """
        rows, tokens, width = embeds.shape
        cos, sin = self.language.rotary_emb(embeds, positions)
        cos, sin = cos.view(rows * tokens, 1, 1, -1), sin.view(rows * tokens, 1, 1, -1)
        causal = torch.ones((tokens, tokens), dtype=torch.bool, device=embeds.device).tril()
        # Padding attends to itself alone, so that it stays finite (no row of the softmax is empty).
        attend = (causal & padding.bool()[:, None, :]) | torch.eye(tokens, dtype=torch.bool, device=embeds.device)
        attend = attend[:, None]
        group = self.heads // self.kv_heads

        def heads_first(x: torch.Tensor) -> torch.Tensor:  # (rows x tokens, heads, 1, d) -> (rows, heads, tokens, d)
            return x.view(rows, tokens, -1, self.head_dim).transpose(1, 2)

        # One token per row, as in a decode step (see ``_project``).
        hidden, layers = embeds.reshape(rows * tokens, 1, width), []
        for index, (norm_w, qkv_w, q_norm_w, k_norm_w, o_w, post_w, gate_up_w, down_w) in enumerate(self.layers):
            q, k, v = self._project(hidden, norm_w, qkv_w, q_norm_w, k_norm_w, cos, sin, self.eps,
                                    self.heads, self.kv_heads, self.head_dim)
            q, k, v = heads_first(q), heads_first(k), heads_first(v)
            layers.append((k, v))
            attended = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                                      attn_mask=attend, scale=self.scale)
            hidden = self._feed_forward(hidden, attended.transpose(1, 2).reshape(rows * tokens, 1, -1), o_w, post_w,
                                        gate_up_w, down_w, self.eps)
            if index < len(deepstack):
                hidden.view(-1, width).index_add_(0, visual, deepstack[index].to(hidden.dtype))
        return self._logits(hidden.view(rows, tokens, width)), layers

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The next token's logits, from each row's last position."""
        return self.lm_head(_rms(hidden[:, -1], self.language.norm.weight, self.eps))
