"""A Gemma 4 Unified checkpoint's vision_config and audio_config (transformers'
Gemma4UnifiedVisionConfig / Gemma4UnifiedAudioConfig as config.json holds them) -> the normalized
embedder configs: every field understood, on the allow-list, or refused by name."""

from __future__ import annotations

from typing import Any

from gemma_export.checkpoints.hf_config import Fields
from gemma_export.errors import ConfigError
from gemma_graphs.config import InvalidConfig
from gemma_graphs.encoders.gemma4_unified import Gemma4UnifiedAudioConfig, Gemma4UnifiedVisionConfig


def _fields(raw: Any, model_type: str, where: str) -> Fields:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    f = Fields(raw, where)
    found = f.take("model_type", str, required=True)
    if found != model_type:
        raise ConfigError(f"{where}: model_type = {found!r} is not supported (supported: {model_type!r})")
    return f


def parse_gemma4_unified_vision(vision_config: dict[str, Any], text_hidden_size: int,
                                where: str = "config.json: vision_config") -> Gemma4UnifiedVisionConfig:
    """The patch embedder; text_hidden_size is text_config.hidden_size, which embed_vision projects to."""
    f = _fields(vision_config, "gemma4_unified_vision", where)
    ints = {name: f.take(name, int, required=True)
            for name in ("patch_size", "pooling_kernel_size", "mm_embed_dim", "mm_posemb_size")}
    eps = f.take("rms_norm_eps", (int, float), required=True)
    # embed_vision normalizes and projects vectors of output_proj_dims; the patch embedder makes mm_embed_dim.
    out_dims = f.take("output_proj_dims", int, required=True)
    if out_dims != ints["mm_embed_dim"]:
        raise ConfigError(f"{where}: output_proj_dims = {out_dims} differs from mm_embed_dim = {ints['mm_embed_dim']} "
                          "(not supported: transformers' embedder would not run)")
    f.finish()
    try:
        return Gemma4UnifiedVisionConfig(**ints, rms_norm_eps=float(eps), text_hidden_size=text_hidden_size)
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_gemma4_unified_audio(audio_config: dict[str, Any], text_hidden_size: int,
                               where: str = "config.json: audio_config") -> Gemma4UnifiedAudioConfig:
    """The audio-frame embedder; text_hidden_size as for the vision embedder."""
    f = _fields(audio_config, "gemma4_unified_audio", where)
    dim = f.take("audio_embed_dim", int, required=True)
    eps = f.take("rms_norm_eps", (int, float), required=True)
    f.finish()
    try:
        return Gemma4UnifiedAudioConfig(audio_embed_dim=dim, rms_norm_eps=float(eps), text_hidden_size=text_hidden_size)
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None
