"""The normalized Gemma config and the family table: what each Gemma generation defaults to and
which features it has. Both checkpoint readers (HF config.json, GGUF metadata) take their defaults
from FAMILIES and resolve every structural switch into the config's own fields (family_switches),
so the model definition switches on those fields alone and a manifest's config describes the
model without the table: `family` is a label, never looked up after a checkpoint is read.

No project imports: the model definition (gemma_graphs) and the compiler (gemma_export) both
read this module, and neither imports the other through it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# Far beyond any Gemma (62 layers at most), low enough that the per-layer lists a reader builds from
# a lying layer count stay small.
MAX_LAYERS = 1024


class InvalidConfig(ValueError):
    """A normalized config that cannot describe a Gemma model; the readers add where it came from."""


@dataclasses.dataclass(frozen=True)
class Family:
    """One Gemma generation's defaults (for fields a checkpoint may leave out) and features."""

    name: str
    model_types: tuple[str, ...]  # HF config.json model_type values read as this family
    rope_theta: float  # global (full-attention) layers
    rope_local_theta: float | None  # sliding layers; None: no separate local base (the global one)
    rope_scaling: bool  # linear RoPE scaling on global layers is part of the family
    softcaps: bool  # the family has the soft-capping fields at all
    attn_softcap: float | None  # default when the field is absent
    final_softcap: float | None
    sliding_pattern: int | None  # every n-th layer is global (layer i when (i + 1) % n == 0); None: no sliding layers
    gguf_sliding_window: int | None  # window when a GGUF file does not say (None: required)
    query_pre_attn_scalar: bool  # the query scale is query_pre_attn_scalar ** -0.5 (else head_dim ** -0.5)
    qk_norm: bool  # RMSNorm over head_dim on q and k before RoPE
    sandwich_norms: bool  # attention and MLP outputs normalised before the residual add
    # Gemma 4's changes; off for Gemma 1-3.
    norm_offset: float = 1.0  # RMSNorm multiplies by (norm_offset + w): Gemma 1-3 store w zero-centred
    unscaled_queries: bool = False  # attention scaling 1.0 (the q/k norms set the scale)
    v_norm: bool = False  # values get a weightless RMSNorm
    layer_scalar: bool = False  # each layer's output is multiplied by its stored layer_scalar
    last_layer_global: bool = False  # the last layer is full attention whatever layer_types says
    proportional_rope: bool = False  # full layers may use proportional RoPE (partial_rotary_factor)
    image_bidirectional: bool = False  # use_bidirectional_attention "vision" is taken: media_blocks vision_blocks
    vision_blocks: str = "sliding"  # the media_blocks that use_bidirectional_attention "vision" means
    bidirectional_default: str | None = None  # use_bidirectional_attention when a config leaves it out
    media_blocks: str = "none"  # the layers on which an image's tokens see each other both ways (MEDIA_BLOCKS)
    per_layer_fields: bool = False  # per-layer head dims, K = V, KV sharing, double-wide MLPs
    inputs_and_experts: bool = False  # per-layer input embeddings and a mixture of experts (config fields)
    output_norms: bool = True  # with sandwich_norms: the attention and MLP outputs are normalised (VaultGemma: not)
    altup: bool = False  # Gemma 3n: AltUp streams, LAuReL, per-layer inputs, KV sharing, MLP sparsity (config fields)


# Sources: transformers' modeling_gemma{,2,3}.py (the parity reference) and gemma_pytorch.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gemma", ("gemma",), rope_theta=10_000.0, rope_local_theta=None, rope_scaling=False,
           softcaps=False, attn_softcap=None, final_softcap=None, sliding_pattern=None,
           gguf_sliding_window=None, query_pre_attn_scalar=False, qk_norm=False, sandwich_norms=False),
    # Layer 0 local, then alternating (transformers, gemma_pytorch); llama.cpp's window when unstated.
    Family("gemma2", ("gemma2",), rope_theta=10_000.0, rope_local_theta=None, rope_scaling=False,
           softcaps=True, attn_softcap=50.0, final_softcap=30.0, sliding_pattern=2,
           gguf_sliding_window=4096, query_pre_attn_scalar=True, qk_norm=False, sandwich_norms=True),
    # transformers 5.x modeling_vaultgemma.py: Gemma 2's layers without the post-attention and
    # post-feedforward norms (the input and pre-feedforward norms stay); its soft-capping and scaling.
    Family("vaultgemma", ("vaultgemma",), rope_theta=10_000.0, rope_local_theta=None, rope_scaling=False,
           softcaps=True, attn_softcap=50.0, final_softcap=30.0, sliding_pattern=2,
           gguf_sliding_window=None, query_pre_attn_scalar=True, qk_norm=False, sandwich_norms=True,
           output_norms=False),
    # 5 local : 1 global; no soft-capping; the window (512 or 1024) depends on the size, so it is
    # required. An image's tokens see each other on every layer (transformers' Gemma 3 masks).
    Family("gemma3", ("gemma3_text",), rope_theta=1_000_000.0, rope_local_theta=10_000.0, rope_scaling=True,
           softcaps=True, attn_softcap=None, final_softcap=None, sliding_pattern=6,
           gguf_sliding_window=None, query_pre_attn_scalar=True, qk_norm=True, sandwich_norms=True,
           media_blocks="all"),
    # transformers 5.x modeling_gemma4.py: norms multiply by w, no query scaling, v norm, layer
    # scalars; the last layer is always global; final softcap 30 in every released config; with
    # use_bidirectional_attention "vision", an image's tokens see each other on sliding layers only.
    Family("gemma4", ("gemma4_text",), rope_theta=1_000_000.0, rope_local_theta=10_000.0, rope_scaling=True,
           softcaps=True, attn_softcap=None, final_softcap=None, sliding_pattern=6,
           gguf_sliding_window=None, query_pre_attn_scalar=False, qk_norm=True, sandwich_norms=True,
           norm_offset=0.0, unscaled_queries=True, v_norm=True, layer_scalar=True, last_layer_global=True,
           proportional_rope=True, image_bidirectional=True, per_layer_fields=True, inputs_and_experts=True),
    # transformers 5.x modeling_gemma4_unified.py (the encoder-free 12B): Gemma 4's layers without
    # per-layer inputs or experts; use_bidirectional_attention defaults to "vision", under which an
    # image's tokens see each other on every layer type (its masks OR the image blocks into both).
    Family("gemma4_unified", ("gemma4_unified_text",), rope_theta=1_000_000.0, rope_local_theta=10_000.0,
           rope_scaling=True, softcaps=True, attn_softcap=None, final_softcap=None, sliding_pattern=6,
           gguf_sliding_window=None, query_pre_attn_scalar=False, qk_norm=True, sandwich_norms=True,
           norm_offset=0.0, unscaled_queries=True, v_norm=True, layer_scalar=True, last_layer_global=True,
           proportional_rope=True, image_bidirectional=True, vision_blocks="all", bidirectional_default="vision",
           per_layer_fields=True),
    # transformers 5.x modeling_embedding_gemma2.py: Gemma 4's layers as an encoder (bidirectional,
    # embedding models only: no model_type reads as it; checkpoints/embedding_gemma2.py), per-layer
    # inputs from the projection alone, no K = V, KV sharing, experts or soft-capping.
    Family("embedding_gemma2", (), rope_theta=1_000_000.0, rope_local_theta=10_000.0, rope_scaling=False,
           softcaps=False, attn_softcap=None, final_softcap=None, sliding_pattern=6,
           gguf_sliding_window=None, query_pre_attn_scalar=False, qk_norm=True, sandwich_norms=True,
           norm_offset=0.0, unscaled_queries=True, v_norm=True, layer_scalar=True, last_layer_global=True,
           per_layer_fields=True),
    # transformers 5.x modeling_gemma3n.py: Gemma 4's norms (w itself), unscaled queries and v norm,
    # 4 sliding : 1 full by default, no attention softcap, final softcap 30; AltUp, LAuReL, per-layer
    # inputs, KV sharing and MLP sparsity are config fields (altup).
    Family("gemma3n", ("gemma3n_text",), rope_theta=1_000_000.0, rope_local_theta=10_000.0, rope_scaling=False,
           softcaps=True, attn_softcap=None, final_softcap=30.0, sliding_pattern=5,
           gguf_sliding_window=None, query_pre_attn_scalar=False, qk_norm=True, sandwich_norms=True,
           norm_offset=0.0, unscaled_queries=True, v_norm=True, altup=True),
)}
# Multimodal checkpoints whose text decoder is exported: model_type -> the decoder's family.
MULTIMODAL_MODEL_TYPES = {"gemma3": "gemma3", "gemma4": "gemma4", "gemma4_unified": "gemma4_unified",
                          "gemma3n": "gemma3n"}
MODEL_TYPES = {model_type: f.name for f in FAMILIES.values() for model_type in f.model_types}
MEDIA_BLOCKS = ("none", "sliding", "all")


def _finite(value: float) -> bool:
    return isinstance(value, int) or math.isfinite(value)  # an int of any size is finite


def family_switches(family: Family) -> dict[str, Any]:
    """The GemmaConfig fields a checkpoint reader takes from the family (no checkpoint states them)."""
    return {"norm_offset": family.norm_offset, "qk_norm": family.qk_norm, "sandwich_norms": family.sandwich_norms,
            "unscaled_queries": family.unscaled_queries, "v_norm": family.v_norm, "layer_scalar": family.layer_scalar,
            "media_blocks": family.media_blocks, "unnormed_outputs": not family.output_norms}


def sliding_layer_types(family: Family, layers: int) -> tuple[str, ...]:
    """The family's default layer pattern."""
    n = family.sliding_pattern
    if n is None:
        return ("full",) * layers
    types = ["full" if (i + 1) % n == 0 else "sliding" for i in range(layers)]
    if family.last_layer_global:
        types[-1] = "full"
    return tuple(types)


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float  # global (full-attention) layers
    rope_local_theta: float  # sliding-window layers
    rope_scaling_factor: float  # linear scaling, global layers only (1.0 = none)
    query_pre_attn_scalar: float
    attn_softcap: float | None
    final_softcap: float | None
    sliding_window: int | None
    layer_types: tuple[str, ...]  # "sliding" or "full", one per layer
    bos_token_id: int = 2
    eos_token_id: int = 1
    pad_token_id: int = 0
    # Structural switches, resolved from the family when a checkpoint is read (family_switches);
    # the defaults are Gemma 1's.
    norm_offset: float = 1.0  # RMSNorm multiplies by (norm_offset + w): Gemma 1-3 store w zero-centred
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE
    sandwich_norms: bool = False  # attention and MLP outputs normalised before the residual add
    unnormed_outputs: bool = False  # sandwich_norms without the output norms: only the MLP's input is (VaultGemma)
    unscaled_queries: bool = False  # attention scaling 1.0 (the q/k norms set the scale)
    v_norm: bool = False  # values get a weightless RMSNorm
    layer_scalar: bool = False  # each layer's output is multiplied by its stored layer_scalar
    media_blocks: str = "none"  # the layers on which an image's tokens see each other both ways (MEDIA_BLOCKS)
    # Set by an export that writes the media encoders (not --text-only): the decoder takes the
    # encoders' rows at placeholder columns and each column's lookahead (runtime/interface.py).
    media_inputs: bool = False
    # Gemma 4 features, each off at its default (Gemma 1-3 keep the defaults).
    global_head_dim: int | None = None  # head_dim of full-attention layers (None: head_dim)
    num_global_kv_heads: int | None = None  # KV heads of full layers (None: num_kv_heads)
    attention_k_eq_v: bool = False  # full layers take their values from the key projection
    rope_rotated_fraction: float = 1.0  # full layers: proportional RoPE's partial_rotary_factor
    hidden_size_per_layer_input: int = 0  # per-layer input embeddings of this width (0: none)
    vocab_size_per_layer_input: int = 0  # the per-layer token table's rows (0: none, the projection alone)
    num_kv_shared_layers: int = 0  # the last n layers read the cache of an earlier layer of their type
    double_wide_mlp: bool = False  # KV-shared layers' MLP is 2 x intermediate_size wide
    num_experts: int = 0  # a routed mixture of experts beside each layer's MLP (0: none)
    top_k_experts: int = 0
    moe_intermediate_size: int = 0
    # Gemma 3n features, each off at its default.
    altup_num_inputs: int = 0  # AltUp: the residual stream as this many streams (0: one plain stream)
    altup_active_idx: int = 0  # the stream the layer computes on (AltUp's prediction it corrects from)
    altup_correct_scale: bool = False  # the corrected active stream is scaled by correct_output_scale
    laurel_rank: int = 0  # LAuReL: a low-rank residual of this rank beside attention (0: none)
    activation_sparsity: tuple[float, ...] = ()  # per layer, the MLP gate's Gaussian top-k target (0: dense)

    @property
    def query_scale(self) -> float:
        return 1.0 if self.unscaled_queries else float(self.query_pre_attn_scalar) ** -0.5

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == "sliding" else None

    def layer_lookahead(self, layer: int) -> bool:
        """Whether the layer's attention takes the media decoder's lookahead (an image's tokens see
        the whole image there)."""
        return self.media_inputs and (self.media_blocks == "all"
                                      or self.media_blocks == "sliding" and self.layer_types[layer] == "sliding")

    def _full(self, layer: int) -> bool:
        return self.layer_types[layer] == "full"

    def layer_head_dim(self, layer: int) -> int:
        return self.global_head_dim if self._full(layer) and self.global_head_dim else self.head_dim

    def layer_kv_heads(self, layer: int) -> int:
        return self.num_global_kv_heads if self._full(layer) and self.num_global_kv_heads else self.num_kv_heads

    def layer_k_eq_v(self, layer: int) -> bool:
        return self.attention_k_eq_v and self._full(layer)

    def layer_rope(self, layer: int) -> tuple[float, float, int]:
        """(theta, scaling factor, rotated frequency pairs) of one layer. The factor divides the
        frequencies (linear scaling, and proportional RoPE's factor); pairs beyond the rotated ones
        have frequency 0 (proportional RoPE: those dims pass through)."""
        half = self.layer_head_dim(layer) // 2
        if not self._full(layer):
            return self.rope_local_theta, 1.0, half
        # int(partial_rotary_factor * head_dim // 2), as transformers computes it
        return self.rope_theta, self.rope_scaling_factor, int(self.rope_rotated_fraction * self.layer_head_dim(layer) // 2)

    @property
    def first_kv_shared_layer(self) -> int:
        return self.num_layers - self.num_kv_shared_layers

    def kv_source(self, layer: int) -> int:
        """The layer whose cache this layer reads: itself, or for a KV-shared layer the last
        earlier layer of its type that keeps a cache."""
        first = self.first_kv_shared_layer
        if layer < first:
            return layer
        return max(i for i in range(first) if self.layer_types[i] == self.layer_types[layer])

    def layer_sparsity(self, layer: int) -> float:
        return self.activation_sparsity[layer] if self.activation_sparsity else 0.0

    def layer_intermediate_size(self, layer: int) -> int:
        wide = self.double_wide_mlp and layer >= self.first_kv_shared_layer
        return self.intermediate_size * (2 if wide else 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["activation_sparsity"] = list(self.activation_sparsity)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GemmaConfig:
        """Inverse of to_dict (the manifest's normalized config). Every field must be there: a
        config written before a switch became a field would otherwise read as Gemma 1's."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise InvalidConfig(f"normalized config has unknown fields: {sorted(unknown)}")
        missing = fields - set(d)
        if missing:
            raise InvalidConfig(f"normalized config lacks fields {sorted(missing)} (written by an older "
                                "gemma-export: export it again)")
        return cls(**{**d, "layer_types": tuple(d["layer_types"]),
                          "activation_sparsity": tuple(d["activation_sparsity"])})

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise InvalidConfig(f"unknown family {self.family!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise InvalidConfig(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.num_layers > MAX_LAYERS:
            raise InvalidConfig(f"{self.num_layers} layers is beyond any Gemma (at most {MAX_LAYERS} supported)")
        for name in ("rope_theta", "rope_local_theta", "rope_scaling_factor", "query_pre_attn_scalar",
                     "attn_softcap", "final_softcap", "sliding_window", "global_head_dim", "num_global_kv_heads"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and _finite(value)):
                raise InvalidConfig(f"config field {name} must be a positive number, got {value}")
        for name in ("hidden_size_per_layer_input", "vocab_size_per_layer_input", "num_experts", "top_k_experts",
                     "moe_intermediate_size", "altup_num_inputs", "laurel_rank"):
            if getattr(self, name) < 0:
                raise InvalidConfig(f"config field {name} must not be negative, got {getattr(self, name)}")
        if not (self.rms_norm_eps >= 0 and _finite(self.rms_norm_eps)):
            raise InvalidConfig(f"rms_norm_eps must be a non-negative number, got {self.rms_norm_eps}")
        if not 0 < self.rope_rotated_fraction <= 1:
            raise InvalidConfig(f"the rotated fraction of RoPE must be in (0, 1], got {self.rope_rotated_fraction}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise InvalidConfig(f"{name} {getattr(self, name)} is outside the vocabulary ({self.vocab_size})")
        if self.num_heads % self.num_kv_heads:
            raise InvalidConfig(
                f"num_attention_heads ({self.num_heads}) is not a multiple of num_key_value_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise InvalidConfig(f"head_dim must be even for RoPE, got {self.head_dim}")
        if len(self.layer_types) != self.num_layers:
            raise InvalidConfig(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if self.media_blocks not in MEDIA_BLOCKS:
            raise InvalidConfig(f"media_blocks {self.media_blocks!r} (supported: {', '.join(MEDIA_BLOCKS)})")
        bad = set(self.layer_types) - {"sliding", "full"}
        if bad:
            raise InvalidConfig(f"unsupported layer types {sorted(bad)}")
        if "sliding" in self.layer_types and not self.sliding_window:
            raise InvalidConfig("sliding-window layers present but sliding_window is not set")
        if not 0 <= self.num_kv_shared_layers < self.num_layers:
            raise InvalidConfig(f"num_kv_shared_layers must be below the layer count, got {self.num_kv_shared_layers}")
        first = self.first_kv_shared_layer
        if set(self.layer_types[first:]) - set(self.layer_types[:first]):
            raise InvalidConfig("KV-shared layers of a type that no earlier layer computes a cache for")
        if self.global_head_dim is not None and self.global_head_dim % 2:
            raise InvalidConfig(f"global_head_dim must be even for RoPE, got {self.global_head_dim}")
        if self.num_global_kv_heads and self.num_heads % self.num_global_kv_heads:
            raise InvalidConfig(f"num_attention_heads ({self.num_heads}) is not a multiple of "
                                f"num_global_key_value_heads ({self.num_global_kv_heads})")
        if self.num_experts and not 0 < self.top_k_experts <= self.num_experts:
            raise InvalidConfig(f"top_k_experts must be 1..{self.num_experts}, got {self.top_k_experts}")
        # Gemma 3n (AltUp) looks ids beyond a smaller per-layer table up as 0; Gemma 4 looks every id up
        smaller = 0 < self.vocab_size_per_layer_input < self.vocab_size and self.altup_num_inputs
        if self.hidden_size_per_layer_input and self.vocab_size_per_layer_input not in (0, self.vocab_size) \
                and not smaller:
            raise InvalidConfig(f"vocab_size_per_layer_input ({self.vocab_size_per_layer_input}) differs from "
                                f"vocab_size ({self.vocab_size}); not supported")
        if self.altup_num_inputs and not 0 <= self.altup_active_idx < self.altup_num_inputs:
            raise InvalidConfig(f"altup_active_idx must be 0..{self.altup_num_inputs - 1}, got {self.altup_active_idx}")
        if self.activation_sparsity and (len(self.activation_sparsity) != self.num_layers
                                         or not all(0 <= t < 1 for t in self.activation_sparsity)):
            raise InvalidConfig(f"activation_sparsity needs one target in [0, 1) per layer "
                                f"({self.num_layers}), got {list(self.activation_sparsity)}")


@dataclasses.dataclass(frozen=True)
class Dense:
    """One dense layer of the head (sentence-transformers' Dense with the identity activation)."""

    in_features: int
    out_features: int
    bias: bool


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    """An embedding model (EmbeddingGemma): the body's config (a Gemma 3 whose attention is
    bidirectional, graphs/embedding.py), mean pooling, these dense layers, L2 normalisation."""

    text: GemmaConfig  # the body
    dense: tuple[Dense, ...]  # after pooling, in order

    @property
    def dimensions(self) -> int:
        return self.dense[-1].out_features if self.dense else self.text.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text.to_dict(), "dense": [dataclasses.asdict(d) for d in self.dense]}
