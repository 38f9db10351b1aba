"""A Gemma 4 checkpoint's vision_config (transformers' Gemma4VisionConfig as config.json holds it)
-> the normalized Gemma4VisionConfig: every field understood, on the allow-list, or refused by name."""

from __future__ import annotations

from typing import Any

from gemma_export.checkpoints.hf_config import Fields, layer_count
from gemma_export.errors import ConfigError, names
from gemma_graphs.config import InvalidConfig
from gemma_graphs.encoders.gemma4_vision import Gemma4VisionConfig

# Fields of the tower config that transformers' vision tower never reads.
_UNREAD = ("max_position_embeddings",)


def parse_gemma4_vision(vision_config: dict[str, Any], text_hidden_size: int,
                        where: str = "config.json: vision_config") -> Gemma4VisionConfig:
    """The vision tower and embedder of a Gemma 4 checkpoint; text_hidden_size is the width of its
    text decoder (text_config.hidden_size), which embed_vision projects to."""
    if not isinstance(vision_config, dict):
        raise ConfigError(f"{where}: expected an object, got {type(vision_config).__name__}")
    f = Fields(vision_config, where)
    model_type = f.take("model_type", str, required=True)
    if model_type != "gemma4_vision":
        raise ConfigError(f"{where}: model_type = {model_type!r} is not supported (supported: 'gemma4_vision')")
    ints = {name: f.take(name, int, required=True) for name in (
        "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
        "patch_size", "position_embedding_size", "pooling_kernel_size")}
    layers = layer_count(f.take("num_hidden_layers", int, required=True), "num_hidden_layers", where)
    activation = f.take("hidden_activation", str, required=True)
    eps = f.take("rms_norm_eps", (int, float), required=True)
    clipped = f.take("use_clipped_linears", bool, required=True)
    standardize = f.take("standardize", bool, required=True)
    # transformers' vision attention is bias-free whatever this says; true would promise biases.
    f.expect("attention_bias", (None, False))
    theta = _axial_rope(f.take("rope_parameters", dict, required=True), where)
    for name in _UNREAD:
        f.raw.pop(name, None)
    f.finish()
    try:
        return Gemma4VisionConfig(
            **ints, num_hidden_layers=layers, hidden_activation=activation, rms_norm_eps=float(eps),
            rope_theta=theta, use_clipped_linears=clipped, standardize=standardize,
            text_hidden_size=text_hidden_size)
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None


def _axial_rope(entry: dict[str, Any], where: str) -> float:
    """rope_theta of the tower's rope_parameters, whose rope_type must be axial."""
    entry = dict(entry)
    rope_type = entry.pop("rope_type", None)
    if rope_type != "axial":
        raise ConfigError(f"{where}: rope_parameters.rope_type = {rope_type!r} is not supported (supported: 'axial')")
    theta = entry.pop("rope_theta", None)
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise ConfigError(f"{where}: rope_parameters.rope_theta = {theta!r} is not a number")
    if entry:
        raise ConfigError(f"{where}: rope_parameters has unsupported field(s): {names(sorted(entry))}")
    return float(theta)
