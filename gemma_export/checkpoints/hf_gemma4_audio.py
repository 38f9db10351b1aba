"""A Gemma 4 checkpoint's `audio_config` (model_type gemma4_audio, E2B/E4B) -> Gemma4AudioConfig,
every field understood or refused; nothing defaulted."""

from __future__ import annotations

from gemma_export.checkpoints.hf_config import Fields
from gemma_export.errors import ConfigError
from gemma_graphs.config import InvalidConfig
from gemma_graphs.encoders.gemma4_audio import SUPPORTED_ACTS, Gemma4AudioConfig

_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "conv_kernel_size", "attention_chunk_size",
         "attention_context_left", "attention_context_right", "output_proj_dims")
_FLOATS = ("residual_weight", "attention_logit_cap", "attention_invalid_logits_value", "rms_norm_eps",
           "gradient_clipping")


def parse_gemma4_audio(audio_config: dict, text_hidden_size: int, *, where: str = "audio_config") -> Gemma4AudioConfig:
    """The audio tower's config; text_hidden_size (the text decoder's hidden_size) is the width
    the audio embedder projects to."""
    if not isinstance(audio_config, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    f = Fields(audio_config, where)
    f.expect("model_type", ("gemma4_audio",))
    values: dict = {name: f.take(name, int, required=True) for name in _INTS}
    values.update({name: float(f.take(name, (int, float), required=True)) for name in _FLOATS})
    channels = f.take("subsampling_conv_channels", list, required=True)
    if len(channels) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) for c in channels):
        raise ConfigError(f"{where}: subsampling_conv_channels = {channels!r} must be two integers")
    act = f.take("hidden_act", str, required=True)
    if act not in SUPPORTED_ACTS:
        raise ConfigError(f"{where}: hidden_act = {act!r} is not supported (supported: {SUPPORTED_ACTS})")
    clipped = f.take("use_clipped_linears", bool, required=True)
    f.finish()
    try:
        return Gemma4AudioConfig(**values, subsampling_conv_channels=tuple(channels), hidden_act=act,
                                 use_clipped_linears=clipped, text_hidden_size=text_hidden_size)
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None
