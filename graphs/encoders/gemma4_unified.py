"""Gemma 4 Unified's encoder-free embedders as torch modules: the linear patch embedder (LayerNorm,
dense, LayerNorm, factorized 2-D positions, LayerNorm, then embed_vision) and the audio-frame
embedder (embed_audio), with their normalized configs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from gemma_graphs.config import InvalidConfig
from gemma_graphs.ops import unit_rms_norm

# nn.LayerNorm's default, which transformers' Gemma4UnifiedVisionEmbedder keeps (not a config field).
LAYER_NORM_EPS = 1e-5


def _positive_ints(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidConfig(f"{name} = {value!r} must be a positive integer")


def _positive_float(value: Any, name: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise InvalidConfig(f"{name} = {value!r} must be a positive finite number")


def _from_dict(cls: type, raw: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = sorted(fields - set(raw)), sorted(set(raw) - fields)
    if missing or unknown:
        raise InvalidConfig(f"{cls.__name__}: missing {missing}, unknown {unknown}")
    return cls(**raw)


@dataclasses.dataclass(frozen=True)
class Gemma4UnifiedVisionConfig:
    """The patch embedder of a Gemma 4 Unified checkpoint; validated when built."""

    patch_size: int  # the processor's small patches; a model patch merges k x k of them
    pooling_kernel_size: int
    mm_embed_dim: int
    mm_posemb_size: int
    rms_norm_eps: float  # embed_vision's pre-projection norm
    text_hidden_size: int

    def __post_init__(self) -> None:
        _positive_ints(self, ("patch_size", "pooling_kernel_size", "mm_embed_dim", "mm_posemb_size",
                              "text_hidden_size"))
        _positive_float(self.rms_norm_eps, "rms_norm_eps")

    @property
    def patch_pixels(self) -> int:
        return 3 * (self.patch_size * self.pooling_kernel_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Gemma4UnifiedVisionConfig:
        """The inverse of to_dict; a missing or unknown key is an error naming it."""
        return _from_dict(cls, raw)


@dataclasses.dataclass(frozen=True)
class Gemma4UnifiedAudioConfig:
    """The audio-frame embedder of a Gemma 4 Unified checkpoint: each soft token is a frame of
    audio_embed_dim raw samples."""

    audio_embed_dim: int
    rms_norm_eps: float
    text_hidden_size: int

    def __post_init__(self) -> None:
        _positive_ints(self, ("audio_embed_dim", "text_hidden_size"))
        _positive_float(self.rms_norm_eps, "rms_norm_eps")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Gemma4UnifiedAudioConfig:
        """The inverse of to_dict; a missing or unknown key is an error naming it."""
        return _from_dict(cls, raw)


class _Projection(nn.Module):
    """RMSNorm without a weight (in fp32), then a bias-free projection to the text width."""

    def __init__(self, width: int, text_width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.embedding_projection = nn.Linear(width, text_width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(unit_rms_norm(x, self.eps))


class _PatchEmbedder(nn.Module):
    def __init__(self, cfg: Gemma4UnifiedVisionConfig):
        super().__init__()
        self.patch_ln1 = nn.LayerNorm(cfg.patch_pixels, eps=LAYER_NORM_EPS)
        self.patch_dense = nn.Linear(cfg.patch_pixels, cfg.mm_embed_dim)
        self.patch_ln2 = nn.LayerNorm(cfg.mm_embed_dim, eps=LAYER_NORM_EPS)
        self.pos_embedding = nn.Parameter(torch.zeros(cfg.mm_posemb_size, 2, cfg.mm_embed_dim))
        self.pos_norm = nn.LayerNorm(cfg.mm_embed_dim, eps=LAYER_NORM_EPS)

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.patch_ln2(self.patch_dense(self.patch_ln1(pixel_values)))
        at = positions.clamp(min=0)
        # Each axis of the table looked up by its own coordinate; a coordinate of -1 adds nothing.
        table = self.pos_embedding
        x = nn.functional.embedding(at[..., 0], table[:, 0]) * (positions[..., 0:1] != -1).to(h.dtype)
        y = nn.functional.embedding(at[..., 1], table[:, 1]) * (positions[..., 1:2] != -1).to(h.dtype)
        return self.pos_norm(h + x + y)


class Gemma4UnifiedImageEmbedder(nn.Module):
    """pixel_values [images, patches, 3 * (patch_size * k)^2] (merged model patches, as the
    processor makes them) and image_position_ids [images, patches, 2] ((x, y), (-1, -1) for padding)
    -> soft_tokens [images, patches, text_hidden_size] fp32 and soft_token_mask [images, patches]
    (the non-padding patches): soft_tokens[i][soft_token_mask[i]] is transformers'
    get_image_features(...).pooler_output[i]; one soft token per model patch."""

    INPUTS = ("pixel_values", "image_position_ids")
    OUTPUTS = ("soft_tokens", "soft_token_mask")

    def __init__(self, cfg: Gemma4UnifiedVisionConfig):
        super().__init__()
        self.config = cfg
        self.vision_embedder = _PatchEmbedder(cfg)
        self.embed_vision = _Projection(cfg.mm_embed_dim, cfg.text_hidden_size, cfg.rms_norm_eps)

    def forward(self, pixel_values: torch.Tensor, image_position_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.embed_vision(self.vision_embedder(pixel_values, image_position_ids))
        return tokens, (image_position_ids != -1).all(dim=-1)

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """Tensors that are not checkpoint weights: none."""
        return {}


class Gemma4UnifiedAudioEmbedder(nn.Module):
    """input_features [clips, frames, audio_embed_dim] (raw waveform frames, as the feature
    extractor cuts them) and input_features_mask [clips, frames] -> soft_tokens [clips, frames,
    text_hidden_size] fp32 and soft_token_mask (the mask, passed through: the runtime keeps the
    frames it marks, as transformers drops the padding frames): one soft token per frame."""

    INPUTS = ("input_features", "input_features_mask")
    OUTPUTS = ("soft_tokens", "soft_token_mask")

    def __init__(self, cfg: Gemma4UnifiedAudioConfig):
        super().__init__()
        self.config = cfg
        self.embed_audio = _Projection(cfg.audio_embed_dim, cfg.text_hidden_size, cfg.rms_norm_eps)

    def forward(self, input_features: torch.Tensor, input_features_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # a copy: an exported graph's output may not be one of its inputs
        return self.embed_audio(input_features), input_features_mask.to(torch.bool).clone()

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """Tensors that are not checkpoint weights: none."""
        return {}
