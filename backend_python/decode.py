"""One decode step over the slot cache, computed from the checkpoint's own weights.

Prefill runs through the Hugging Face model unchanged. Decoding one token per
sequence is where serving spends its time, so this step reads each weight once
with fewer, larger matrix products: q/k/v and gate/up are fused into single
projections (the original modules keep working as views into the fused weights),
and the grouped-query attention packs each KV head's query heads together
instead of repeating keys and values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _rms(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """The checkpoint's RMSNorm: in float32, scaled by its weight in the model's dtype."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _fuse(modules: list[nn.Linear]) -> torch.Tensor:
    """One weight for several projections of the same input; the modules become views of it."""
    fused = torch.cat([m.weight.data for m in modules])
    offset = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(fused[offset:offset + rows], requires_grad=False)
        offset += rows
    return fused


class DecodeStep:
    def __init__(self, model: nn.Module, cache):
        self.language = model.model.language_model
        self.lm_head = model.lm_head
        self.cache = cache
        config = model.config.text_config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        self.layers = []
        for layer in self.language.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if any(m.bias is not None for m in (attn.q_proj, attn.k_proj, attn.v_proj)):
                raise ValueError("fused decoding expects projections without bias (as in Qwen3-VL)")
            qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = _fuse([mlp.gate_proj, mlp.up_proj])
            self.layers.append((layer, qkv, gate_up))

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor, span: int,
                 arange: torch.Tensor) -> torch.Tensor:
        """Logits of the next token for ``ids`` (rows, 1), reading ``span`` cached tokens per row."""
        rows = ids.shape[0]
        hq, hkv, d = self.heads, self.kv_heads, self.head_dim
        hidden = self.language.embed_tokens(ids)
        cos, sin = self.language.rotary_emb(hidden, positions.view(1, rows, 1).expand(3, rows, 1))
        cos, sin = cos[:, None], sin[:, None]  # (rows, 1, 1, d)
        attend = (arange[:span][None, :] <= lengths[:, None]).view(rows, 1, 1, span)
        self.cache.bind(lengths, span)
        for index, (layer, qkv_weight, gate_up_weight) in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = _rms(hidden, layer.input_layernorm)
            q, k, v = F.linear(x, qkv_weight).split([hq * d, hkv * d, hkv * d], dim=-1)
            q = _rotate(_rms(q.view(rows, 1, hq, d), attn.q_norm).transpose(1, 2), cos, sin)
            k = _rotate(_rms(k.view(rows, 1, hkv, d), attn.k_norm).transpose(1, 2), cos, sin)
            keys, values = self.cache.update(k, v.view(rows, 1, hkv, d).transpose(1, 2), index)
            out = F.scaled_dot_product_attention(q.reshape(rows, hkv, hq // hkv, d), keys, values,
                                                 attn_mask=attend, scale=attn.scaling)
            hidden = hidden + attn.o_proj(out.reshape(rows, 1, hq * d))
            gate, up = F.linear(_rms(hidden, layer.post_attention_layernorm), gate_up_weight).chunk(2, dim=-1)
            hidden = hidden + mlp.down_proj(F.silu(gate) * up)
        return self.lm_head(_rms(hidden[:, -1], self.language.norm))
