"""The embedding model (EmbeddingGemma, EmbeddingGemma 2): a Gemma 3 or Gemma 4 body whose
attention is bidirectional, mean pooling over the real tokens, the dense layers and L2
normalisation, as one torch module.

sentence-transformers' modules (Transformer, Pooling, Dense, Normalize) over transformers'
Gemma3TextModel with use_bidirectional_attention, and transformers' EmbeddingGemma2Model, are the
parity references: every query sees every real key of its row on full layers, and the keys within
sliding_window // 2 positions either side on sliding layers (transformers' |i - j| <
sliding_window // 2 + 1 for Gemma 3; EmbeddingGemma 2's config states that radius itself, and its
reader stores twice it). EmbeddingGemma 2 projects each token to its embedding width before the
mean; here the projection is the first dense layer, after it (a linear map commutes with a mean).
"""

from __future__ import annotations

import torch
from torch import nn

from gemma_graphs import ops
from gemma_graphs.config import EmbeddingConfig
from gemma_graphs.gemma import Attention, Body
from gemma_runtime.interface import EMBEDDING_INPUT_NAMES, EMBEDDINGS


class BidirectionalAttention(Attention):
    """Gemma 3's attention without a cache: visible [B, 1, S, S] bool says which keys each query sees."""

    def forward(self, x, position_ids, visible, past_k=None, past_v=None, lookahead=None):
        cfg = self.cfg
        b, s, _ = x.shape
        theta, scale, pairs = cfg.layer_rope(self.layer)
        q = self.q_norm(self.q_proj(x).view(b, s, self.heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).view(b, s, self.kv_heads, self.head_dim))
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim)
        if cfg.v_norm:
            v = ops.unit_rms_norm(v, cfg.rms_norm_eps)
        q = ops.rope(q, position_ids, theta, scale, pairs)
        k = ops.rope(k, position_ids, theta, scale, pairs)
        wide = ops.compute_dtype(x.dtype)
        group = self.heads // self.kv_heads
        # [B, Hkv, G, S, D] queries against [B, Hkv, 1, D, S] keys: the KV heads broadcast, never repeated
        qg = q.transpose(1, 2).reshape(b, self.kv_heads, group, s, self.head_dim).to(wide)
        kt = k.permute(0, 2, 3, 1)[:, :, None].to(wide)
        scores = (qg @ kt) * cfg.query_scale
        if cfg.attn_softcap:
            scores = torch.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
        scores = scores.masked_fill(~visible[:, :, None], ops.MASKED)
        probs = torch.softmax(scores, dim=-1)
        out = probs @ v.transpose(1, 2)[:, :, None].to(wide)
        out = out.reshape(b, self.heads, s, self.head_dim).transpose(1, 2).reshape(b, s, -1).to(x.dtype)
        return self.o_proj(out), None, None


class GemmaEmbedder(nn.Module):
    """forward(input_ids [B, S] int64, attention_mask [B, S] int64: 1 real, 0 padding; rows
    right-padded) -> embeddings [B, dimensions], unit length. Parameter names: the body's HF names
    (model.*), then dense.{i}.weight / .bias."""

    def __init__(self, cfg: EmbeddingConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg.text, BidirectionalAttention)
        self.dense = nn.ModuleList(nn.Linear(d.in_features, d.out_features, bias=d.bias) for d in cfg.dense)

    def forward(self, input_ids, attention_mask):
        text = self.cfg.text
        b, s = input_ids.shape
        columns = torch.arange(s, device=input_ids.device)
        position_ids = columns[None].expand(b, s)  # right padding: a real token's column is its position
        real = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S]: the keys a query may see
        near = (columns[:, None] - columns[None, :]).abs() <= text.sliding_window // 2 if text.sliding_window else None
        x = self.model.embed_tokens(input_ids)
        x = x * ops.embed_scale(text.hidden_size, x.dtype)
        per_layer = self.model.per_layer_inputs(input_ids, x) if text.hidden_size_per_layer_input else None
        for i, layer in enumerate(self.model.layers):
            visible = real & near if text.layer_types[i] == "sliding" else real
            x, _, _ = layer(x, position_ids, visible, None, None, None if per_layer is None else per_layer[:, :, i])
        x = self.model.norm(x)
        # mean pooling as a weighted sum with weights 1 / count: no sum larger than its largest term (fp16)
        weights = attention_mask.to(x.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True)
        pooled = (weights[:, None, :] @ x)[:, 0]
        for dense in self.dense:
            pooled = dense(pooled)
        return unit_length(pooled)


def unit_length(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last axis, scaled by the largest |x| first so that the sum of squares
    stays within fp16's range."""
    x = x / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True))


def io_names() -> tuple[list[str], list[str]]:
    return list(EMBEDDING_INPUT_NAMES), [EMBEDDINGS]


def parameter_shapes(cfg: EmbeddingConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = GemmaEmbedder(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}

