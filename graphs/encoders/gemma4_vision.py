"""Gemma 4's image encoder as a torch module: the patch embedder with its 2-D position table, the
encoder layers with axial RoPE, the position-driven average pooling, the optional standardization
and the multimodal embedder (embed_vision), with its normalized config (Gemma4VisionConfig)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from gemma_graphs.config import MAX_LAYERS, InvalidConfig
from gemma_graphs.ops import MASKED, rope_inv_freq

# transformers' ACT2FN names -> torch's gelu approximation.
ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}


@dataclasses.dataclass(frozen=True)
class Gemma4VisionConfig:
    """The vision tower and multimodal embedder of a Gemma 4 checkpoint; validated when built."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_activation: str
    rms_norm_eps: float  # the tower's norms and the embedder's pre-projection norm
    rope_theta: float  # axial RoPE
    patch_size: int
    position_embedding_size: int
    pooling_kernel_size: int
    use_clipped_linears: bool
    standardize: bool
    text_hidden_size: int

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "patch_size", "position_embedding_size",
                     "pooling_kernel_size", "text_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidConfig(f"{name} = {value!r} must be a positive integer")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise InvalidConfig(f"{name} = {value!r} must be a positive finite number")
        for name in ("use_clipped_linears", "standardize"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidConfig(f"{name} = {getattr(self, name)!r} must be a boolean")
        if self.num_hidden_layers > MAX_LAYERS:
            raise InvalidConfig(f"num_hidden_layers = {self.num_hidden_layers} is beyond any Gemma "
                                f"(at most {MAX_LAYERS} supported)")
        if self.hidden_activation not in ACTIVATIONS:
            raise InvalidConfig(f"hidden_activation = {self.hidden_activation!r} is not supported "
                                f"(supported: {', '.join(ACTIVATIONS)})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InvalidConfig(f"num_attention_heads = {self.num_attention_heads} is not a multiple of "
                                f"num_key_value_heads = {self.num_key_value_heads}")
        # Axial RoPE rotates each half of the head (x, then y) by half-split pairs.
        if self.head_dim % 4:
            raise InvalidConfig(f"head_dim = {self.head_dim} must be a multiple of 4 (axial RoPE)")
        # transformers 5.25 skips the pooler at kernel 1 and then keeps the padding patches as tokens.
        if self.pooling_kernel_size < 2:
            raise InvalidConfig(f"pooling_kernel_size = {self.pooling_kernel_size} is not supported (at least 2)")

    @property
    def patch_pixels(self) -> int:
        return 3 * self.patch_size ** 2

    @property
    def patches_per_token(self) -> int:
        return self.pooling_kernel_size ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Gemma4VisionConfig:
        """The inverse of to_dict; a missing or unknown key is an error naming it."""
        fields = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(fields - set(raw)), sorted(set(raw) - fields)
        if missing or unknown:
            raise InvalidConfig(f"Gemma4VisionConfig: missing {missing}, unknown {unknown}")
        return cls(**raw)


class _Norm(nn.Module):
    """Gemma 4's RMSNorm: x * (mean(x^2) + eps)^-1/2 * w (the multiplier stored as it is)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _unit_norm(x, self.eps) * self.weight


def _unit_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class _Linear(nn.Module):
    """A bias-free projection stored as `<name>.linear.weight`; clipped linears also clamp input and
    output to checkpoint scalars (input_min, input_max, output_min, output_max)."""

    def __init__(self, cfg: Gemma4VisionConfig, fan_in: int, fan_out: int):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out, bias=False)
        self.clipped = cfg.use_clipped_linears
        if self.clipped:
            for name in ("input_min", "input_max", "output_min", "output_max"):
                setattr(self, name, nn.Parameter(torch.zeros(())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.clipped:
            return self.linear(x)
        x = torch.clamp(x, self.input_min, self.input_max)
        return torch.clamp(self.linear(x), self.output_min, self.output_max)


class _PatchEmbedder(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.input_proj = nn.Linear(cfg.patch_pixels, cfg.hidden_size, bias=False)
        self.position_embedding_table = nn.Parameter(torch.zeros(2, cfg.position_embedding_size, cfg.hidden_size))

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        # Pixels in [0, 1] (the processor only rescales) -> [-1, 1].
        h = self.input_proj(2.0 * (pixel_values - 0.5))
        at = positions.clamp(min=0)
        table = self.position_embedding_table
        pos = nn.functional.embedding(at[..., 0], table[0]) + nn.functional.embedding(at[..., 1], table[1])
        return h + torch.where(padding[..., None], torch.zeros_like(pos), pos)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Axial RoPE: the first half of each head rotates by x positions, the second by y positions,
    each half split into its own two halves (NeoX pairs); cos/sin [n, p, 1, head_dim]."""
    q = x.shape[-1] // 4
    a0, a1, b0, b1 = x[..., :q], x[..., q:2 * q], x[..., 2 * q:3 * q], x[..., 3 * q:]
    return x * cos + torch.cat([-a1, a0, -b1, b0], dim=-1) * sin


class _Attention(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.eps = cfg.rms_norm_eps
        self.q_proj = _Linear(cfg, cfg.hidden_size, self.heads * self.head_dim)
        self.k_proj = _Linear(cfg, cfg.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = _Linear(cfg, cfg.hidden_size, self.kv_heads * self.head_dim)
        self.o_proj = _Linear(cfg, self.heads * self.head_dim, cfg.hidden_size)
        self.q_norm = _Norm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = _Norm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        n, p = h.shape[0], h.shape[1]
        kv, d = self.kv_heads, self.head_dim
        groups = self.heads // kv
        q = _rotate(self.q_norm(self.q_proj(h).view(n, p, self.heads, d)), cos, sin)
        k = _rotate(self.k_norm(self.k_proj(h).view(n, p, kv, d)), cos, sin)
        v = _unit_norm(self.v_proj(h).view(n, p, kv, d), self.eps)
        # Query head i reads key/value head i // groups; no scaling (the q/k norms set the scale).
        q = q.permute(0, 2, 1, 3).reshape(n, kv, groups, p, d)
        k = k.permute(0, 2, 3, 1)[:, :, None]  # [n, kv, 1, d, p]
        v = v.permute(0, 2, 1, 3)[:, :, None]  # [n, kv, 1, p, d]
        scores = torch.matmul(q, k)
        scores = torch.where(key_valid[:, None, None, None, :], scores, torch.full_like(scores, MASKED))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [n, kv, groups, p, d]
        out = out.reshape(n, self.heads, p, d).permute(0, 2, 1, 3).reshape(n, p, self.heads * d)
        return self.o_proj(out)


class _MLP(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.approximate = ACTIVATIONS[cfg.hidden_activation]
        self.gate_proj = _Linear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = _Linear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = _Linear(cfg, cfg.intermediate_size, cfg.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate = nn.functional.gelu(self.gate_proj(h), approximate=self.approximate)
        return self.down_proj(gate * self.up_proj(h))


class _Layer(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.self_attn = _Attention(cfg)
        self.mlp = _MLP(cfg)
        eps = cfg.rms_norm_eps
        self.input_layernorm = _Norm(cfg.hidden_size, eps)
        self.post_attention_layernorm = _Norm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = _Norm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = _Norm(cfg.hidden_size, eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        h = h + self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, key_valid))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class _Encoder(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))
        # Not a checkpoint tensor: bound from constant_buffers() when traced on the meta device.
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim // 2, cfg.rope_theta, 1.0), persistent=False)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        # Padding patches keep position -1 here, as in transformers; their keys are masked and
        # their outputs are zeroed before pooling.
        angles = positions.to(torch.float32)[..., None] * self.inv_freq  # [n, p, 2, head_dim / 4]
        ax, ay = angles[:, :, 0], angles[:, :, 1]
        angles = torch.cat([ax, ax, ay, ay], dim=-1)[:, :, None, :]
        cos, sin = angles.cos(), angles.sin()
        for layer in self.layers:
            h = layer(h, cos, sin, key_valid)
        return h


class _VisionTower(nn.Module):
    """Patches -> pooled, scaled (and optionally standardized) soft tokens of the tower's width."""

    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.kernel, self.root_hidden = cfg.pooling_kernel_size, math.sqrt(cfg.hidden_size)
        self.patch_embedder = _PatchEmbedder(cfg)
        self.encoder = _Encoder(cfg)
        self.standardize = cfg.standardize
        if self.standardize:
            self.std_bias = nn.Parameter(torch.zeros(cfg.hidden_size))
            self.std_scale = nn.Parameter(torch.ones(cfg.hidden_size))

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padding = (positions == -1).all(dim=-1)  # [n, p]
        h = self.patch_embedder(pixel_values, positions, padding)
        h = self.encoder(h, positions, ~padding)
        h = torch.where(padding[..., None], torch.zeros_like(h), h)
        pooled, mask = self._pool(h, positions)
        pooled = pooled * self.root_hidden
        if self.standardize:
            pooled = (pooled - self.std_bias) * self.std_scale
        return pooled, mask

    def _pool(self, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Average of each k x k cell of the patch grid into token cell_x + (width // k) * cell_y,
        width = the image's largest x + 1; p / k^2 token slots per image (p a multiple of k^2), of
        which the slots some patch falls in are real."""
        k = self.kernel
        tokens = h.shape[1] // (k * k)
        at = positions.clamp(min=0)
        width = at[..., 0].amax(dim=-1, keepdim=True) + 1
        cell = torch.div(at, k, rounding_mode="floor")
        slot = cell[..., 0] + torch.div(width, k, rounding_mode="floor") * cell[..., 1]  # [n, p]
        hits = slot[..., None] == torch.arange(tokens, device=h.device)  # [n, p, tokens]
        weights = hits.to(h.dtype) / (k * k)
        return torch.matmul(weights.transpose(1, 2), h), hits.any(dim=1)


class _Embedder(nn.Module):
    """The multimodal embedder: a scale-free RMSNorm, then the projection to the text width."""

    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.eps = cfg.rms_norm_eps
        self.embedding_projection = nn.Linear(cfg.hidden_size, cfg.text_hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(_unit_norm(x, self.eps))


class Gemma4ImageEncoder(nn.Module):
    """pixel_values [images, patches, 3 * patch_size^2] fp32 in [0, 1] and image_position_ids
    [images, patches, 2] int64 ((x, y) per patch, (-1, -1) for padding), as
    Gemma4ImageProcessorPil makes them -> soft_tokens [images, patches / k^2, text_hidden_size] fp32
    and soft_token_mask [images, patches / k^2] bool (k = pooling_kernel_size; patches a multiple
    of k^2, as the processor pads them).

    soft_tokens[i][soft_token_mask[i]] are image i's rows of transformers' get_image_features
    (pooler_output[i]), the rows Gemma4Model scatters into its image placeholders; for processor
    inputs the mask is a prefix of num_soft_tokens_per_image[i] slots. The other slots hold
    values of no meaning."""

    INPUTS = ("pixel_values", "image_position_ids")
    OUTPUTS = ("soft_tokens", "soft_token_mask")

    def __init__(self, cfg: Gemma4VisionConfig):
        super().__init__()
        self.config = cfg
        self.vision_tower = _VisionTower(cfg)
        self.embed_vision = _Embedder(cfg)

    def forward(self, pixel_values: torch.Tensor,
                image_position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, mask = self.vision_tower(pixel_values, image_position_ids)
        return self.embed_vision(pooled), mask

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """Tensors that are not checkpoint weights: the axial RoPE's inverse frequencies."""
        cfg = self.config
        return {"vision_tower.encoder.inv_freq": rope_inv_freq(cfg.head_dim // 2, cfg.rope_theta, 1.0)}
