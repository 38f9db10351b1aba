"""The `gemma4` GGUF architecture as llama.cpp's converter writes it: tensor names and the config
read back from its metadata and tensors.

What the converter does, so that reading it back is exact: no tensor is transposed or shifted
(Gemma 4's norms multiply by w itself, stored as w); expert tables keep HF's layout ([E, 2I, H],
[E, H, I]); router.scale is stored as `ffn_gate_inp.scale`, per_expert_scale as
`ffn_down_exps.scale`, layer_scalar as `layer_output_scale`; K = V is the absence of `attn_v` on
full layers; proportional RoPE is a `rope_freqs` tensor of 1.0 for the rotated frequency pairs and
1e30 for the rest (rope.dimension_count is the full head_dim); per-layer head_count_kv and
feed_forward_length may be arrays (global KV heads, the double-wide MLP of KV-shared layers).
Not stored, and taken as transformers' Gemma4TextConfig defaults: attention scaling 1.0, tanh GELU,
the embedding scales.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from gemma_export.checkpoints.hf_config import layer_count
from gemma_export.errors import ConfigError
from gemma_graphs.config import FAMILIES, GemmaConfig, family_switches

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "per_layer_token_embd.weight": "model.embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "model.per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "model.per_layer_projection_norm.weight",
}
LAYER_NAMES = {  # blk.N.<key> -> model.layers.N.<value>
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "inp_gate.weight": "per_layer_input_gate.weight",
    "proj.weight": "per_layer_projection.weight",
    "post_norm.weight": "post_per_layer_input_norm.weight",
    "layer_output_scale.weight": "layer_scalar",
    "ffn_gate_inp.weight": "router.proj.weight",
    "ffn_gate_inp.scale": "router.scale",
    "ffn_down_exps.scale": "router.per_expert_scale",
    "ffn_gate_up_exps.weight": "experts.gate_up_proj",
    "ffn_down_exps.weight": "experts.down_proj",
    "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
    "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
    "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight",
}
ROPE_FREQS = "rope_freqs.weight"  # proportional RoPE's frequency factors: read into the config
_LAYER = re.compile(r"blk\.([0-9]{1,9})\.(.+)")
_UNROTATED = 1e29  # a factor this large makes a frequency 0 (the converter writes 1e30)


def hf_name(name: str) -> str | None:
    m = _LAYER.fullmatch(name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{int(m.group(1))}.{LAYER_NAMES[m.group(2)]}"
    return GLOBAL_NAMES.get(name)


def gemma4_config(get: Callable[..., Any], shapes: dict[str, tuple[int, ...]], rope_freqs: np.ndarray | None,
                  common: dict, where: str) -> GemmaConfig:
    """`get(key, type, default)` reads `gemma4.{key}` metadata; shapes are the HF names' shapes;
    common holds the fields every family reads alike (vocab, eps, context, token ids)."""
    layers = layer_count(get("block_count", int), "gemma4.block_count", where)
    types = get("attention.sliding_window_pattern", list)
    if len(types) != layers or not all(isinstance(b, bool) for b in types):
        raise ConfigError(f"{where}: gemma4.attention.sliding_window_pattern is not one boolean per layer")
    layer_types = tuple("sliding" if b else "full" for b in types)
    shared = get("attention.shared_kv_layers", int, 0)
    first_shared = layers - shared
    head_dim, global_dim = get("attention.key_length_swa", int), get("attention.key_length", int)
    for key, expected in (("attention.value_length_swa", head_dim), ("attention.value_length", global_dim),
                          ("rope.dimension_count_swa", head_dim), ("rope.dimension_count", global_dim)):
        if get(key, int, expected) != expected:
            raise ConfigError(f"{where}: gemma4.{key} differs from the head_dim of its layers ({expected})")
    kv = _per_layer(get, "attention.head_count_kv", layers, where)
    sliding_kv = {kv[i] for i in range(layers) if layer_types[i] == "sliding"}
    full_kv = {kv[i] for i in range(layers) if layer_types[i] == "full"}
    if len(sliding_kv) > 1 or len(full_kv) > 1:
        raise ConfigError(f"{where}: gemma4.attention.head_count_kv varies within a layer type: {kv}")
    k_eq_v = any(layer_types[i] == "full" and f"model.layers.{i}.self_attn.k_proj.weight" in shapes
                 and f"model.layers.{i}.self_attn.v_proj.weight" not in shapes for i in range(first_shared))
    num_kv = sliding_kv.pop() if sliding_kv else full_kv.copy().pop()
    global_kv = full_kv.pop() if full_kv else num_kv
    if global_kv != num_kv and not k_eq_v:
        raise ConfigError(f"{where}: full layers with {global_kv} KV heads (not {num_kv}) but separate values; "
                          "transformers gives full layers their own KV heads only with K = V")
    ffn = _per_layer(get, "feed_forward_length", layers, where)
    intermediate = ffn[0]
    double_wide = ffn != [intermediate] * layers
    if double_wide and ffn != [intermediate] * first_shared + [2 * intermediate] * shared:
        raise ConfigError(f"{where}: gemma4.feed_forward_length {ffn} is neither one width nor the double-wide "
                          "MLP of the KV-shared layers")
    experts = get("expert_count", int, 0)
    moe = {"num_experts": experts, "top_k_experts": get("expert_used_count", int, 0) if experts else 0,
           "moe_intermediate_size": get("expert_feed_forward_length", int, 0) if experts else 0}
    per_layer_width = get("embedding_length_per_layer_input", int, 0)
    table = shapes.get("model.embed_tokens_per_layer.weight")
    if per_layer_width and not table:
        raise ConfigError(f"{where}: per-layer inputs of width {per_layer_width} without their token table")
    family = FAMILIES["gemma4"]
    return GemmaConfig(
        family="gemma4",
        hidden_size=get("embedding_length", int),
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=get("attention.head_count", int),
        num_kv_heads=num_kv,
        head_dim=head_dim,
        rope_theta=get("rope.freq_base", float, family.rope_theta),
        rope_local_theta=get("rope.freq_base_swa", float, family.rope_local_theta),
        rope_scaling_factor=1.0,
        query_pre_attn_scalar=float(head_dim),  # unused: Gemma 4 does not scale queries
        attn_softcap=None,
        final_softcap=get("final_logit_softcapping", float, None),
        sliding_window=get("attention.sliding_window", int) if "sliding" in layer_types else None,
        layer_types=layer_types,
        global_head_dim=global_dim,
        num_global_kv_heads=global_kv if k_eq_v else None,
        attention_k_eq_v=k_eq_v,
        rope_rotated_fraction=_rotated_fraction(rope_freqs, global_dim, where),
        hidden_size_per_layer_input=per_layer_width,
        vocab_size_per_layer_input=table[0] if table else 0,
        num_kv_shared_layers=shared,
        double_wide_mlp=double_wide,
        **moe,
        **family_switches(family),
        **common,
    )


def _per_layer(get: Callable[..., Any], key: str, layers: int, where: str) -> list[int]:
    """A value the converter writes as one number or as one per layer."""
    try:
        value = get(key, int)
        return [value] * layers
    except ConfigError:
        values = get(key, list)
    if len(values) != layers or not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: gemma4.{key} is neither a number nor one per layer")
    return list(values)


def _rotated_fraction(rope_freqs: np.ndarray | None, global_dim: int, where: str) -> float:
    """The rotated share of the full layers' frequency pairs: rope_freqs holds 1.0 for each
    rotated pair and a huge factor (a zero frequency) for the others; absent, all rotate."""
    if rope_freqs is None:
        return 1.0
    factors = np.asarray(rope_freqs, np.float64).reshape(-1)
    rotated = int(np.sum(factors == 1.0))
    if factors.shape != (global_dim // 2,) or not (np.all(factors[:rotated] == 1.0)
                                                 and np.all(factors[rotated:] > _UNROTATED)):
        raise ConfigError(f"{where}: rope_freqs is not proportional RoPE's (1.0 for the rotated pairs, then "
                          "1e30); other frequency factors are not supported")
    return 2 * rotated / global_dim
