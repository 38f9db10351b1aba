"""The Gemma decoder (Gemma 1, 2 and 3 text) as one torch module, written with the project's
custom ops. It is what the front end traces and, run eagerly in fp32, the reference.

Parameter names are the HF checkpoint names, so weights bind by name.
transformers' modeling_gemma{,2,3}.py is the parity reference for every detail here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from gemma_graphs import ops
from gemma_graphs.config import GemmaConfig


class Norm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: GemmaConfig, layer: int):
        super().__init__()
        d = cfg.head_dim
        self.cfg, self.layer = cfg, layer
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = Norm(d, cfg.rms_norm_eps)
            self.k_norm = Norm(d, cfg.rms_norm_eps)

    def forward(self, x, position_ids, attention_mask, past_k, past_v):
        cfg = self.cfg
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x).view(b, s, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x).view(b, s, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        theta, scale = cfg.layer_rope(self.layer)
        q = ops.rope(q, position_ids, theta, scale)
        k = ops.rope(k, position_ids, theta, scale)
        out, present_k, present_v = ops.attention(
            q, k, v, past_k, past_v, attention_mask,
            cfg.query_scale, cfg.attn_softcap or 0.0, cfg.layer_window(self.layer) or 0)
        return self.o_proj(out), present_k, present_v


class MLP(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(ops.geglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: GemmaConfig, layer: int):
        super().__init__()
        eps = cfg.rms_norm_eps
        self.sandwich = cfg.sandwich_norms
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = Norm(cfg.hidden_size, eps)
        # Gemma 1: the pre-MLP norm. Gemma 2/3: the norm of the attention output.
        self.post_attention_layernorm = Norm(cfg.hidden_size, eps)
        if self.sandwich:
            self.pre_feedforward_layernorm = Norm(cfg.hidden_size, eps)
            self.post_feedforward_layernorm = Norm(cfg.hidden_size, eps)

    def forward(self, x, position_ids, attention_mask, past_k, past_v):
        a, present_k, present_v = self.self_attn(
            self.input_layernorm(x), position_ids, attention_mask, past_k, past_v)
        if self.sandwich:
            x = x + self.post_attention_layernorm(a)
            x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        else:
            x = x + a
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present_k, present_v


class _Model(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = Norm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclasses.dataclass(frozen=True)
class CacheSlot:
    """One KV-cache tensor of the model: graph input past_{name}, output present_{name},
    [batch, kv_heads, length, head_dim]."""

    name: str
    kind: str  # "key" or "value"
    written_by: tuple[int, ...]  # layers
    read_by: tuple[int, ...]

    @property
    def input_name(self) -> str:
        return f"past_{self.name}"

    @property
    def output_name(self) -> str:
        return f"present_{self.name}"


def cache_slots(cfg: GemmaConfig) -> list[CacheSlot]:
    """The model's caches in forward's order: a key and a value per layer."""
    return [CacheSlot(f"{kind}.{i}", kind, (i,), (i,)) for i in range(cfg.num_layers) for kind in ("key", "value")]


def layer_caches(cfg: GemmaConfig, layer: int) -> tuple[int, int]:
    """Indices in cache_slots() of the key and value cache that a layer reads and writes."""
    indices = {(slot.kind, reader): i for i, slot in enumerate(cache_slots(cfg)) for reader in slot.read_by}
    return indices[("key", layer)], indices[("value", layer)]


class GemmaForCausalLM(nn.Module):
    """forward(input_ids, position_ids, attention_mask, *past caches in cache_slots() order)
    -> (logits fp32 [B, S, vocab], *present caches in the same order)."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _Model(cfg)

    def forward(self, input_ids, position_ids, attention_mask, *past):
        cfg = self.cfg
        embed = self.model.embed_tokens.weight
        x = self.model.embed_tokens(input_ids)
        x = x * ops.embed_scale(cfg.hidden_size, x.dtype)
        presents = list(past)
        for i, layer in enumerate(self.model.layers):
            k, v = layer_caches(cfg, i)
            x, presents[k], presents[v] = layer(x, position_ids, attention_mask, past[k], past[v])
        x = self.model.norm(x)
        logits = (x @ embed.t()).float()  # tied lm_head
        if cfg.final_softcap:
            logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
        return (logits, *presents)


def io_names(cfg: GemmaConfig) -> tuple[list[str], list[str]]:
    """Graph input and output names, in forward's order."""
    slots = cache_slots(cfg)
    return (["input_ids", "position_ids", "attention_mask", *(s.input_name for s in slots)],
            ["logits", *(s.output_name for s in slots)])


def parameter_shapes(cfg: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the model reads (HF names) with its shape: the module's own, built on the meta device."""
    with torch.device("meta"):
        model = GemmaForCausalLM(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def load_reference(cfg: GemmaConfig, weights, dtype: torch.dtype = torch.float32) -> GemmaForCausalLM:
    """The eager reference with every weight read from a WeightSource."""
    with torch.device("meta"):
        model = GemmaForCausalLM(cfg)
    state = {}
    for name, p in model.named_parameters():
        arr = weights.read_rows(name, 0, p.shape[0])
        state[name] = torch.from_numpy(np.array(arr)).to(dtype)
    model.load_state_dict(state, assign=True)
    return model.eval()
