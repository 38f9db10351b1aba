"""Gemma 3's image encoder as a torch module: the SigLIP vision tower, the average pooling to
mm_tokens_per_image and the multimodal projector (soft-embedding RMSNorm, projection), with its
normalized config (Gemma3VisionConfig)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import torch
from torch import nn

from gemma_graphs.config import MAX_LAYERS, InvalidConfig

SUPPORTED_ACTS = ("gelu_pytorch_tanh",)

# Checkpoint tensors the encoder deliberately leaves unread: SigLIP's attention-pooling head
# (saved when vision_use_head is true), which Gemma 3 does not use.
UNREAD_PREFIXES = ("vision_tower.head.",)


def unread_parameters(names: Iterable[str]) -> set[str]:
    """The checkpoint tensors among `names` that belong to the image tower but that Gemma 3 never reads."""
    return {name for name in names if name.startswith(UNREAD_PREFIXES)}


@dataclasses.dataclass(frozen=True)
class Gemma3VisionConfig:
    """The SigLIP vision tower and projector of a Gemma 3 checkpoint; validated when built."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int
    layer_norm_eps: float  # the tower's LayerNorms and the projector's soft-embedding RMSNorm
    hidden_act: str
    mm_tokens_per_image: int
    text_hidden_size: int

    def __post_init__(self) -> None:
        self.validate()

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_side(self) -> int:
        return math.isqrt(self.mm_tokens_per_image)

    @property
    def pool_kernel(self) -> int:
        return self.patches_per_side // self.tokens_per_side

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = {"layer_norm_eps": (int, float), "hidden_act": str}.get(field.name, int)
            if isinstance(value, bool) or not isinstance(value, expected):
                raise InvalidConfig(f"vision config field {field.name} = {value!r} has an unsupported type")
            if field.name not in ("layer_norm_eps", "hidden_act") and value <= 0:
                raise InvalidConfig(f"vision config field {field.name} must be positive, got {value}")
        if not (0 <= self.layer_norm_eps < math.inf):
            raise InvalidConfig(f"vision config field layer_norm_eps must be a non-negative number, "
                                f"got {self.layer_norm_eps}")
        if self.hidden_act not in SUPPORTED_ACTS:
            raise InvalidConfig(f"vision config field hidden_act = {self.hidden_act!r} is not supported "
                                f"(supported: {', '.join(SUPPORTED_ACTS)})")
        if self.num_hidden_layers > MAX_LAYERS:
            raise InvalidConfig(f"vision config field num_hidden_layers = {self.num_hidden_layers} is beyond "
                                f"any supported tower (at most {MAX_LAYERS})")
        if self.hidden_size % self.num_attention_heads:
            raise InvalidConfig(f"vision config field hidden_size ({self.hidden_size}) is not a multiple of "
                                f"num_attention_heads ({self.num_attention_heads})")
        if self.image_size % self.patch_size:
            raise InvalidConfig(f"vision config field image_size ({self.image_size}) is not a multiple of "
                                f"patch_size ({self.patch_size})")
        side = math.isqrt(self.mm_tokens_per_image)
        if side * side != self.mm_tokens_per_image:
            raise InvalidConfig(f"mm_tokens_per_image = {self.mm_tokens_per_image} is not a square number")
        if self.patches_per_side % side:
            raise InvalidConfig(f"mm_tokens_per_image = {self.mm_tokens_per_image} ({side} per side) does not "
                                f"divide the patch grid ({self.patches_per_side} patches per side = image_size "
                                f"{self.image_size} / patch_size {self.patch_size})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma3VisionConfig:
        """Inverse of to_dict (the manifest's normalized config); every field must be there."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise InvalidConfig(f"normalized vision config has unknown fields: {unknown}")
        missing = sorted(fields - set(d))
        if missing:
            raise InvalidConfig(f"normalized vision config lacks fields {missing}")
        return cls(**d)


class _Embeddings(nn.Module):
    """Patches by a strided convolution, plus a learned position per patch."""

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.patches_per_side ** 2, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values)  # [n, hidden, side, side]
        patches = patches.flatten(2).transpose(1, 2)  # [n, side * side, hidden], row-major patches
        # Every image has every position, so the whole table is added (no gather).
        return patches + self.position_embedding.weight


class _Attention(nn.Module):
    """Bidirectional multi-head self-attention over the patches, in plain MatMul and Softmax."""

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, hidden = x.shape[1], x.shape[2]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, seq, self.heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(x)) * self.head_dim ** -0.5
        scores = torch.matmul(q, heads(self.k_proj(x)).transpose(-1, -2))
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, heads(self.v_proj(x)))  # [n, heads, seq, head_dim]
        return self.out_proj(out.transpose(1, 2).reshape(-1, seq, hidden))


class _Mlp(nn.Module):
    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x), approximate="tanh"))


class _Layer(nn.Module):
    """A pre-norm transformer layer: LayerNorm, attention, residual; LayerNorm, MLP, residual."""

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = _Attention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _VisionTower(nn.Module):
    """SigLIP's vision transformer up to its last hidden state (post_layernorm)."""

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


class _SoftEmbNorm(nn.Module):
    """Gemma's RMSNorm: the weight is stored as w and multiplies as 1 + w."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


class _Projector(nn.Module):
    """Average pooling of the patch grid to tokens_per_side^2 tokens, RMSNorm, projection to the text width."""

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.tokens, self.kernel = cfg.tokens_per_side, cfg.pool_kernel
        self.mm_input_projection_weight = nn.Parameter(torch.zeros(cfg.hidden_size, cfg.text_hidden_size))
        self.mm_soft_emb_norm = _SoftEmbNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        t, k, hidden = self.tokens, self.kernel, patches.shape[-1]
        # Row-major patch p = (ti*k + ki) * (t*k) + tj*k + kj: the pool windows are axes 2 and 4.
        pooled = patches.reshape(-1, t, k, t, k, hidden).mean(dim=(2, 4)).reshape(-1, t * t, hidden)
        return torch.matmul(self.mm_soft_emb_norm(pooled), self.mm_input_projection_weight)


class Gemma3ImageEncoder(nn.Module):
    """pixel_values [images, channels, image_size, image_size] fp32 -> soft tokens [images,
    mm_tokens_per_image, text_hidden_size] fp32, as transformers' Gemma3Model.get_image_features
    (its pooler_output)."""

    INPUTS = ("pixel_values",)

    def __init__(self, cfg: Gemma3VisionConfig):
        super().__init__()
        self.config = cfg
        self.vision_tower = _VisionTower(cfg)
        self.multi_modal_projector = _Projector(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.multi_modal_projector(self.vision_tower(pixel_values))

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """Tensors that are not checkpoint weights: none (positions are the whole table)."""
        return {}
