"""The normalized Gemma config and the family table: what each Gemma generation defaults to and
which features it has. Both checkpoint readers (HF config.json, GGUF metadata) take their defaults
from FAMILIES, and the model definition switches on the config's fields.

No project imports: the model definition (gemma_graphs) and the compiler (gemma_export) both
read this module, and neither imports the other through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


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


# Sources: transformers' modeling_gemma{,2,3}.py (the parity reference) and gemma_pytorch.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gemma", ("gemma",), rope_theta=10_000.0, rope_local_theta=None, rope_scaling=False,
           softcaps=False, attn_softcap=None, final_softcap=None, sliding_pattern=None,
           gguf_sliding_window=None, query_pre_attn_scalar=False, qk_norm=False, sandwich_norms=False),
    # Layer 0 local, then alternating (transformers, gemma_pytorch); llama.cpp's window when unstated.
    Family("gemma2", ("gemma2",), rope_theta=10_000.0, rope_local_theta=None, rope_scaling=False,
           softcaps=True, attn_softcap=50.0, final_softcap=30.0, sliding_pattern=2,
           gguf_sliding_window=4096, query_pre_attn_scalar=True, qk_norm=False, sandwich_norms=True),
    # 5 local : 1 global; no soft-capping; the window (512 or 1024) depends on the size, so it is required.
    Family("gemma3", ("gemma3_text",), rope_theta=1_000_000.0, rope_local_theta=10_000.0, rope_scaling=True,
           softcaps=True, attn_softcap=None, final_softcap=None, sliding_pattern=6,
           gguf_sliding_window=None, query_pre_attn_scalar=True, qk_norm=True, sandwich_norms=True),
)}

MODEL_TYPES = {model_type: f.name for f in FAMILIES.values() for model_type in f.model_types}


def sliding_layer_types(family: Family, layers: int) -> tuple[str, ...]:
    """The family's default layer pattern."""
    n = family.sliding_pattern
    if n is None:
        return ("full",) * layers
    return tuple("full" if (i + 1) % n == 0 else "sliding" for i in range(layers))


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

    @property
    def features(self) -> Family:
        return FAMILIES[self.family]

    @property
    def qk_norm(self) -> bool:
        return self.features.qk_norm

    @property
    def sandwich_norms(self) -> bool:
        return self.features.sandwich_norms

    @property
    def query_scale(self) -> float:
        return float(self.query_pre_attn_scalar) ** -0.5

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == "sliding" else None

    def layer_rope(self, layer: int) -> tuple[float, float]:
        """(theta, linear scaling factor) of one layer."""
        if self.layer_types[layer] == "sliding":
            return self.rope_local_theta, 1.0
        return self.rope_theta, self.rope_scaling_factor

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GemmaConfig:
        """Inverse of to_dict (the manifest's normalized config)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise InvalidConfig(f"normalized config has unknown fields: {sorted(unknown)}")
        return cls(**{**d, "layer_types": tuple(d["layer_types"])})

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise InvalidConfig(f"unknown family {self.family!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise InvalidConfig(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise InvalidConfig(
                f"num_attention_heads ({self.num_heads}) is not a multiple of num_key_value_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise InvalidConfig(f"head_dim must be even for RoPE, got {self.head_dim}")
        if len(self.layer_types) != self.num_layers:
            raise InvalidConfig(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        bad = set(self.layer_types) - {"sliding", "full"}
        if bad:
            raise InvalidConfig(f"unsupported layer types {sorted(bad)}")
        if "sliding" in self.layer_types and not self.sliding_window:
            raise InvalidConfig("sliding-window layers present but sliding_window is not set")
