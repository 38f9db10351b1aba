"""A Gemma 3 checkpoint's `vision_config` (SigLIP) and `mm_tokens_per_image` -> Gemma3VisionConfig,
every field understood, ignored on purpose or refused by name."""

from __future__ import annotations

from gemma_export.checkpoints.hf_config import Fields, layer_count
from gemma_export.errors import ConfigError
from gemma_graphs.config import InvalidConfig
from gemma_graphs.encoders.gemma3_vision import SUPPORTED_ACTS, Gemma3VisionConfig

# transformers saves a sub-config's fields that differ from its class defaults only, so a field
# left out means SiglipVisionConfig's default (transformers 5.25), and Gemma3Config's for the wrapper.
SIGLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6)
MM_TOKENS_DEFAULT = 256


def parse_gemma3_vision(vision_config: dict, wrapper: dict, text_hidden_size: int,
                        where: str = "config.json") -> Gemma3VisionConfig:
    """The image encoder's config from a gemma3 config.json: `vision_config` read strictly, and
    `mm_tokens_per_image` from the wrapper (its other fields are the wrapper parser's)."""
    mm_tokens = Fields(wrapper, where).take("mm_tokens_per_image", int, MM_TOKENS_DEFAULT)
    f = Fields(vision_config, f"{where} vision_config")
    f.expect("model_type", ("siglip_vision_model",))
    ints = {name: f.take(name, int, SIGLIP_DEFAULTS[name])
            for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_channels", "image_size",
                         "patch_size")}
    layers = layer_count(f.take("num_hidden_layers", int, SIGLIP_DEFAULTS["num_hidden_layers"]),
                         "num_hidden_layers", f.where)
    act = f.take("hidden_act", str, SIGLIP_DEFAULTS["hidden_act"])
    if act not in SUPPORTED_ACTS:
        raise ConfigError(f"{f.where}: hidden_act = {act!r} is not supported (supported: {', '.join(SUPPORTED_ACTS)})")
    eps = f.take("layer_norm_eps", (int, float), SIGLIP_DEFAULTS["layer_norm_eps"])
    # Without effect on the tower's last hidden state: Gemma 3 does not use SigLIP's attention-pooling
    # head (its tensors are left unread), and projection_dim is PaliGemma's field.
    f.take("vision_use_head", bool, None)
    f.take("projection_dim", int, None)
    f.finish()
    try:
        return Gemma3VisionConfig(**ints, num_hidden_layers=layers, layer_norm_eps=float(eps), hidden_act=act,
                                  mm_tokens_per_image=mm_tokens, text_hidden_size=text_hidden_size)
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None
