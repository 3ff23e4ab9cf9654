"""The language model's decoder layers, run from the checkpoint's own weights.

Two passes share them: the prefill of a batch of prompt chunks (packed end to end, no
padding), and one decode step per token, both over the paged KV cache. Decoding one token per
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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .prefill_graphs import LayerGraphs

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
                     segments: torch.Tensor, longest: int, causal: bool,
                     context: "Context | None" = None) -> torch.Tensor:
    """Attention of each segment (a prompt chunk, an image) to its own tokens, for segments packed end
    to end (``q``: (tokens, heads, dim), ``k`` and ``v`` with as many heads or fewer): one
    variable-length flash-attention call on a GPU in 16 bits, segment by segment elsewhere (flash
    attention needs CUDA and 16-bit floats). ``bounds``: where each segment starts, then the end (on
    the host); ``segments``: the same on the device, as int32. The scale is the default, 1/sqrt(dim),
    as in Qwen3-VL.

    With ``context``, ``k`` and ``v`` hold each segment's whole sequence so far (its cached prefix, then
    its own tokens) packed as ``context`` says, and the causal mask is aligned on the last tokens: query
    i of a chunk of n tokens after a prefix of p sees keys 0..p+i."""
    k_bounds, k_segments, k_longest = (bounds, segments, longest) if context is None else \
        (context.bounds, context.segments, context.longest)
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, segments, k_segments, longest, k_longest,
                           **(_varlen_causal() if causal else {}))
    out = []
    for a, b, c, d in zip(bounds, bounds[1:], k_bounds, k_bounds[1:]):
        mask = None
        if causal and d - c != b - a:
            mask = torch.ones((b - a, d - c), dtype=torch.bool, device=q.device).tril(d - c - (b - a))
        out.append(F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[c:d].transpose(0, 1), v[c:d].transpose(0, 1), attn_mask=mask,
            is_causal=causal and mask is None, enable_gqa=True).transpose(0, 1))
    return torch.cat(out)


@dataclass(frozen=True)
class Context:
    """Where a prefill's chunks read their keys from when some continue a sequence (a chunk after an
    earlier one, or after a prefix taken from the cache): ``index``, the flat cache positions of each
    chunk's sequence from its first token to the chunk's last, packed; ``bounds`` (host) and
    ``segments`` (device, int32) where each sequence starts in that packing; ``longest`` its longest."""

    index: torch.Tensor
    bounds: list[int]
    segments: torch.Tensor
    longest: int


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
    def __init__(self, model: nn.Module, compile: bool = False, exact_attention: bool = False):
        self.language = model.model.language_model
        self.lm_head = model.lm_head
        self.cache = None  # the paged KV cache (kv_cache.PagedKVCache), bound once its size is known
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
        self.prefill_graphs: LayerGraphs | None = None  # see graph_prefills
        self._pad_position = 0
        self.compiled = compile
        # Each row reads its own cached length through its block table (a GPU kernel); otherwise the
        # step gathers ``span`` cached tokens per row for SDPA.
        self._attention, self.kernels = None, ()
        # Batch sizes a start runs the step at: one row and any other count for compile; the exact
        # kernels also have a launch shape for many rows, which Triton compiles on first use.
        self.warm_up_rows: tuple[int, ...] = (1, 2)
        if exact_attention:
            from .attention import KERNELS, LAUNCHES, decode_attention

            self._attention, self.kernels = decode_attention, KERNELS
            self.warm_up_rows = tuple(sorted({1, 2, *(first for first, _ in LAUNCHES)}))
        if compile:
            self._project = torch.compile(_project, dynamic=True)
            self._feed_forward = torch.compile(_feed_forward, dynamic=True)

    @property
    def exact_attention(self) -> bool:
        return self._attention is not None

    def step(self, ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor,
             span: int) -> torch.Tensor:
        """Logits of the next token for ``ids`` (rows, 1): row i continues the sequence in ``slots[i]``,
        which holds ``lengths[i]`` cached tokens; its rotary position is ``positions[i]``. Without
        ``exact_attention`` each row reads ``span`` cached tokens (a multiple of the block size)."""
        rows, cache = ids.shape[0], self.cache
        hidden = self.language.embed_tokens(ids)
        cos, sin = self.language.rotary_emb(hidden, positions.view(1, rows, 1).expand(3, rows, 1))
        cos, sin = cos[:, None], sin[:, None]  # (rows, 1, 1, head_dim)
        if not self._attention:
            written = cache.token_index(slots, lengths)
            index = cache.span_index(slots, span)
            attend = (torch.arange(span, device=ids.device)[None, :] <= lengths[:, None]).view(rows, 1, 1, span)
        for layer, (norm_w, qkv_w, q_norm_w, k_norm_w, o_w, post_w, gate_up_w, down_w) in enumerate(self.layers):
            q, k, v = self._project(hidden, norm_w, qkv_w, q_norm_w, k_norm_w, cos, sin, self.eps,
                                    self.heads, self.kv_heads, self.head_dim)
            # One query position: the query heads of a key/value head stand in for query positions.
            q = q.reshape(rows, self.kv_heads, -1, self.head_dim)
            if self._attention:  # writes k and v into the cache itself
                attended = self._attention(q, k, v, cache.keys[layer], cache.values[layer], lengths, slots,
                                           cache.tables, self.scale)
            else:
                cache.write(layer, k[:, :, 0], v[:, :, 0], written)
                keys, values = cache.read(layer, index)
                attended = F.scaled_dot_product_attention(q, keys.transpose(1, 2), values.transpose(1, 2),
                                                          attn_mask=attend, scale=self.scale)
            hidden = self._feed_forward(hidden, attended.reshape(rows, 1, -1), o_w, post_w, gate_up_w, down_w,
                                        self.eps)
        return self._logits(hidden)

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor, bounds: list[int], segments: torch.Tensor,
                written: torch.Tensor, context: Context | None = None, last: torch.Tensor | None = None,
                visual: torch.Tensor | None = None, deepstack: list[torch.Tensor] = (), between=None):
        """Compute prompt chunks packed end to end, store their keys and values in the cache, and return
        the next token's logits after the tokens at ``last`` (or None).

        ``embeds``: (tokens, hidden), image features already in place; ``positions``: (3, tokens)
        rotary positions; ``bounds``: where each chunk starts, then the end (on the host); ``segments``:
        the same on the device, as int32; ``written``: the flat cache position of every token;
        ``context``: where chunks that continue a sequence read its earlier tokens (None: every chunk
        starts its sequence); ``visual``: indices of the image tokens, where the first layers add
        ``deepstack``; ``between``: called after each layer is enqueued.
        """
        tokens, width = embeds.shape
        cos, sin = self.language.rotary_emb(embeds[None], positions[:, None])
        cos, sin = cos.view(tokens, 1, 1, -1), sin.view(tokens, 1, 1, -1)
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        graphs = self.prefill_graphs if self.prefill_graphs and self.prefill_graphs.bucket(tokens) else None
        if graphs is not None:
            rows = graphs.start(tokens)
            for key, value in (("hidden", embeds.view(tokens, 1, width)), ("cos", cos), ("sin", sin)):
                graphs[key][:tokens].copy_(value)
            graphs["written"][tokens:rows].fill_(self._pad_position)
            graphs["written"][:tokens].copy_(written)
            hidden = graphs["hidden"][:tokens]
        else:  # one token per row, as in a decode step (see ``_project``)
            hidden = embeds.view(tokens, 1, width)
        for layer, (norm_w, qkv_w, q_norm_w, k_norm_w, o_w, post_w, gate_up_w, down_w) in enumerate(self.layers):
            if graphs is not None:
                graphs.run(layer, 0)
                q, k, v = graphs["q"][:tokens], graphs["k"][:tokens], graphs["v"][:tokens]
            else:
                q, k, v = self._project(hidden, norm_w, qkv_w, q_norm_w, k_norm_w, cos, sin, self.eps,
                                        self.heads, self.kv_heads, self.head_dim)
                q, k, v = q.squeeze(2), k.squeeze(2), v.squeeze(2)
                self.cache.write(layer, k, v, written)
            if context is not None:
                k, v = self.cache.read(layer, context.index)
            attended = packed_attention(q, k, v, bounds, segments, longest, causal=True, context=context)
            if graphs is not None:
                graphs["attended"][:tokens].copy_(attended.view(tokens, 1, -1))
                graphs.run(layer, 1)
            else:
                hidden = self._feed_forward(hidden, attended.reshape(tokens, 1, -1), o_w, post_w, gate_up_w,
                                            down_w, self.eps)
            if layer < len(deepstack):
                hidden.view(-1, width).index_add_(0, visual, deepstack[layer].to(hidden.dtype))
            if between is not None:
                between()
        return None if last is None else self._logits(hidden[last])

    def graph_prefills(self, max_tokens: int, pad_position: int, capture: bool) -> LayerGraphs:
        """Prefills of up to ``max_tokens`` tokens go through captured graphs from now on (see
        prefill_graphs.py); their padding rows write to flat cache position ``pad_position``."""
        weight = self.layers[0][1]
        d, dtype = self.head_dim, weight.dtype
        self._pad_position = pad_position
        self.prefill_graphs = LayerGraphs(
            "decoder", len(self.layers), self._graph_before, self._graph_after, max_tokens, 16,
            {"hidden": ((1, weight.shape[1]), dtype), "attended": ((1, self.heads * d), dtype),
             "q": ((self.heads, d), dtype), "k": ((self.kv_heads, d), dtype), "v": ((self.kv_heads, d), dtype),
             "cos": ((1, 1, d), dtype), "sin": ((1, 1, d), dtype), "written": ((), torch.long)},
            weight.device, capture)
        self.prefill_graphs["written"].fill_(pad_position)
        return self.prefill_graphs

    def _graph_before(self, layer: int, rows: int) -> None:
        g = self.prefill_graphs
        norm_w, qkv_w, q_norm_w, k_norm_w = self.layers[layer][:4]
        q, k, v = self._project(g["hidden"][:rows], norm_w, qkv_w, q_norm_w, k_norm_w, g["cos"][:rows],
                                g["sin"][:rows], self.eps, self.heads, self.kv_heads, self.head_dim)
        q, k, v = q.squeeze(2), k.squeeze(2), v.squeeze(2)
        self.cache.write(layer, k, v, g["written"][:rows])
        for key, value in (("q", q), ("k", k), ("v", v)):
            g[key][:rows].copy_(value)

    def _graph_after(self, layer: int, rows: int) -> None:
        g = self.prefill_graphs
        o_w, post_w, gate_up_w, down_w = self.layers[layer][4:]
        g["hidden"][:rows].copy_(self._feed_forward(g["hidden"][:rows], g["attended"][:rows], o_w, post_w, gate_up_w,
                                                    down_w, self.eps))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The next token's logits, from each row's last position."""
        return self.lm_head(_rms(hidden[:, -1], self.language.norm.weight, self.eps))
