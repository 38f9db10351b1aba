"""HF config.json (transformers 4.x and 5.x forms) -> the normalized GemmaConfig, with the
family's defaults (gemma_graphs.config.FAMILIES) for the fields a config leaves out. A multimodal
checkpoint (Gemma 3 4B and larger, every Gemma 4) gives its text decoder's config, read from
`text_config`, and what the export leaves out (Multimodal).

Every field of an HF config is either understood, on the explicit allow-list of fields that do
not affect inference, or an error naming it. A value we do not support (attention bias, a RoPE
type other than default/linear, ...) is an error too: never a silent default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gemma_export.checkpoints.json_files import read_json
from gemma_export.errors import ConfigError, names
from gemma_graphs.config import (FAMILIES, MAX_LAYERS, MODEL_TYPES, MULTIMODAL_MODEL_TYPES, Family, GemmaConfig,
                                  InvalidConfig, family_switches, sliding_layer_types)

# Fields that say nothing about the math of inference: read and dropped on purpose.
IGNORED_FIELDS = frozenset(
    {
        "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache",
        "initializer_range", "output_hidden_states", "output_attentions", "return_dict",
        "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
        "_name_or_path", "attention_dropout", "cache_implementation", "_sliding_window_pattern",
        "sliding_window_pattern", "torchscript", "pruned_heads", "tie_encoder_decoder",
        "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
        "finetuning_task", "_attn_implementation_autoset", "model_type", "quantization_config",
        "_model_name_or_path", "unk_token_id",  # the unknown token matters to the tokenizer only
    }
)


# The fields of a multimodal wrapper config besides text_config: the towers and the ids of the
# placeholder tokens their outputs replace.
_TOWERS = {"vision_config": "vision", "audio_config": "audio"}
_PLACEHOLDER_IDS = ("image_token_index", "image_token_id", "boi_token_index", "boi_token_id", "eoi_token_index",
                    "eoi_token_id", "video_token_id", "audio_token_id", "boa_token_id", "eoa_token_index",
                    "eoa_token_id")
# Gemma 3n's soft-token counts matter to its towers' prompts only, which the export skips.
_WRAPPER_IGNORED = {"mm_tokens_per_image", "tie_word_embeddings", "audio_soft_tokens_per_image",
                    "vision_soft_tokens_per_image"}


# Gemma's relatives in transformers 5.x of an architecture we do not export: model_type -> what it is.
# (VaultGemma is a family; EmbeddingGemma 2 an embedding model, checkpoints/embedding_gemma2.py.)
RELATIVES = {
    "t5gemma": "an encoder-decoder model (T5Gemma)",
    "t5gemma2": "an encoder-decoder model (T5Gemma 2)",
    "recurrent_gemma": "a recurrent (Griffin) model: RG-LRU recurrence and local attention",
    "paligemma": "a vision-language model with prefix-LM attention (PaliGemma)",
    "diffusion_gemma": "a diffusion language model (it denoises a canvas, no next-token decoding)",
    "shieldgemma2": "an image-safety classifier (ShieldGemma 2: a yes/no head over Gemma 3)",
    "gemma4_assistant": "a speculative-decoding draft model (it reads its target model's states)",
    "gemma4_unified_assistant": "a speculative-decoding draft model (it reads its target model's states)",
}


def refuse_relative(model_type: object, where: str) -> None:
    """A relative of Gemma we do not export, refused by name with what it is."""
    if isinstance(model_type, str) and model_type in RELATIVES:
        raise ConfigError(f"{where}: {model_type} is {RELATIVES[model_type]}: not supported")


@dataclasses.dataclass(frozen=True)
class Multimodal:
    """What a multimodal checkpoint has beside its text decoder."""

    model_type: str
    towers: tuple[str, ...]  # "vision", "audio"
    placeholder_ids: dict[str, int]  # config field -> token id (image, video, audio and their delimiters)
    encoders: tuple[tuple[str, Any], ...] = ()  # (kind in gemma_export/towers.py, its config), per tower


def load_hf_config(folder: Path) -> tuple[GemmaConfig, Multimodal | None, dict | None]:
    """Read config.json (and generation_config.json if present) from an HF folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: not found (an HF checkpoint folder needs config.json)")
    raw = _read_object(path)
    generation = _read_object(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else None
    cfg, multimodal = parse_checkpoint_config(raw, where=str(path))
    return cfg, multimodal, generation


def parse_checkpoint_config(raw: dict, where: str = "config.json") -> tuple[GemmaConfig, Multimodal | None]:
    """A text model's config, or a multimodal one's text decoder with what the export skips."""
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in MULTIMODAL_MODEL_TYPES:
        return parse_hf_config(raw, where), None
    f = Fields(raw, where)
    f.raw.pop("model_type")
    text = dict(f.take("text_config", dict, required=True))
    family = FAMILIES[MULTIMODAL_MODEL_TYPES[model_type]]
    text.setdefault("model_type", family.model_types[0])
    if not isinstance(text["model_type"], str) or MODEL_TYPES.get(text["model_type"]) != family.name:
        raise ConfigError(f"{where}: text_config.model_type {text['model_type']!r} does not belong to a "
                          f"{model_type!r} checkpoint")
    tower_configs = {name: f.take(key, dict, None) for key, name in _TOWERS.items()}
    towers = tuple(name for name, tower in tower_configs.items() if tower is not None)
    ids = {key: f.take(key, int) for key in _PLACEHOLDER_IDS if key in f.raw}
    if f.take("tie_word_embeddings", bool, True) is not True:
        raise ConfigError(f"{where}: tie_word_embeddings = false is not supported (Gemma ties lm_head)")
    wrapper = {key: f.raw.pop(key) for key in _WRAPPER_IGNORED if key in f.raw}
    f.finish()
    cfg = parse_hf_config(text, f"{where} text_config")
    encoders = tuple((kind, parse(tower_configs[name], wrapper, cfg, f"{where} {name}_config"))
                     for name, (kind, parse) in _ENCODERS[model_type].items() if tower_configs[name] is not None)
    return cfg, Multimodal(model_type, towers, ids, encoders)


def _gemma3_vision(tower: dict, wrapper: dict, text: GemmaConfig, where: str):
    from gemma_export.checkpoints.hf_gemma3_vision import parse_gemma3_vision
    return parse_gemma3_vision(tower, wrapper, text.hidden_size, where)


def _gemma4_vision(tower: dict, wrapper: dict, text: GemmaConfig, where: str):
    from gemma_export.checkpoints.hf_gemma4_vision import parse_gemma4_vision
    return parse_gemma4_vision(tower, text.hidden_size, where)


def _gemma4_audio(tower: dict, wrapper: dict, text: GemmaConfig, where: str):
    from gemma_export.checkpoints.hf_gemma4_audio import parse_gemma4_audio
    return parse_gemma4_audio(tower, text.hidden_size, where=where)


def _gemma4_unified_vision(tower: dict, wrapper: dict, text: GemmaConfig, where: str):
    from gemma_export.checkpoints.hf_gemma4_unified import parse_gemma4_unified_vision
    return parse_gemma4_unified_vision(tower, text.hidden_size, where)


def _gemma4_unified_audio(tower: dict, wrapper: dict, text: GemmaConfig, where: str):
    from gemma_export.checkpoints.hf_gemma4_unified import parse_gemma4_unified_audio
    return parse_gemma4_unified_audio(tower, text.hidden_size, where)


# model_type -> tower ("vision", "audio") -> (encoder kind in gemma_export/towers.py, its config reader)
_ENCODERS = {"gemma3": {"vision": ("gemma3_vision", _gemma3_vision)},
             "gemma4": {"vision": ("gemma4_vision", _gemma4_vision), "audio": ("gemma4_audio", _gemma4_audio)},
             "gemma4_unified": {"vision": ("gemma4_unified_vision", _gemma4_unified_vision),
                                "audio": ("gemma4_unified_audio", _gemma4_unified_audio)},
             # MobileNet-V5 (timm) and the USM conformer: no encoder here, both towers skipped
             "gemma3n": {}}


def _read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


class Fields:
    """Pops fields off a raw config, so that whatever is left at the end is unknown."""

    def __init__(self, raw: dict, where: str):
        self.raw = dict(raw)
        self.where = where

    def take(self, name: str, types: type | tuple, default: Any = ..., *, required: bool = False) -> Any:
        if name not in self.raw:
            if required or default is ...:
                raise ConfigError(f"{self.where}: required field {name!r} is missing")
            return default
        value = self.raw.pop(name)
        if value is None and default is None:
            return None
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise ConfigError(f"{self.where}: field {name!r} has type bool, expected {types}")
        if not isinstance(value, types):
            raise ConfigError(f"{self.where}: field {name!r} = {value!r} has an unsupported type")
        return value

    def expect(self, name: str, allowed: tuple) -> None:
        """A field whose only supported values are `allowed` (absent is fine)."""
        if name in self.raw:
            value = self.raw.pop(name)
            if value not in allowed:
                raise ConfigError(f"{self.where}: {name} = {value!r} is not supported (supported: {allowed})")

    def finish(self) -> None:
        unknown = sorted(k for k in self.raw if k not in IGNORED_FIELDS)
        if unknown:
            raise ConfigError(f"{self.where}: unknown or unsupported config field(s): {names(unknown)}")


def layer_count(value: int, field: str, where: str) -> int:
    """A checkpoint's layer count, checked before anything is built per layer."""
    if not 0 < value <= MAX_LAYERS:
        raise ConfigError(f"{where}: {field} = {value} is not a supported layer count (1 to {MAX_LAYERS})")
    return value


def _token_id(value: Any, name: str, where: str) -> int:
    if isinstance(value, list):  # eos may be a list (e.g. [1, 106]); the first is the model's eos
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: {name} = {value!r} is not a token id")
        return value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: {name} = {value!r} is not a token id")
    return value


def parse_hf_config(raw: dict, where: str = "config.json", *, bidirectional_body: bool = False) -> GemmaConfig:
    """A text decoder's config (model_type gemma, gemma2, gemma3_text or gemma4_text).
    bidirectional_body: the config is an embedding model's body (a sentence-transformers folder's
    Transformer), whose use_bidirectional_attention must be true; a decoder's must not be."""
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        refuse_relative(model_type, where)
        supported = [*MODEL_TYPES, *MULTIMODAL_MODEL_TYPES]
        raise ConfigError(f"{where}: unknown model_type {model_type!r} (supported: {', '.join(supported)})")
    family = FAMILIES[MODEL_TYPES[model_type]]
    f = Fields(raw, where)
    f.raw.pop("model_type")

    hidden = f.take("hidden_size", int, required=True)
    heads = f.take("num_attention_heads", int, required=True)
    kv_heads = f.take("num_key_value_heads", int, heads)
    head_dim = f.take("head_dim", int, required=True)  # never derived from hidden / heads
    layers = layer_count(f.take("num_hidden_layers", int, required=True), "num_hidden_layers", where)

    acts = [f.raw.pop(k) for k in ("hidden_act", "hidden_activation") if k in f.raw]
    # Gemma's MLP is GeGLU with tanh GELU; old Gemma 1 configs say "gelu" but mean tanh (gemma_pytorch).
    if any(act not in (None, "gelu_pytorch_tanh", "gelu") for act in acts):
        raise ConfigError(f"{where}: unsupported activation {acts} (Gemma uses gelu_pytorch_tanh)")

    f.expect("attention_bias", (False,))
    # "vision": an image's tokens see each other (Gemma 4: on sliding layers; Unified: on every layer).
    if "use_bidirectional_attention" in f.raw:
        bidirectional = f.take("use_bidirectional_attention", (bool, str), None)
    else:
        bidirectional = family.bidirectional_default
    if bidirectional_body:
        if bidirectional is not True or family.name != "gemma3":
            raise ConfigError(f"{where}: an embedding model's body is a gemma3_text config with "
                              f"use_bidirectional_attention = true (got {model_type!r}, {bidirectional!r})")
    elif bidirectional is True and family.name == "gemma3":
        raise ConfigError(f"{where}: use_bidirectional_attention = true is an embedding model's body "
                          "(EmbeddingGemma): export its sentence-transformers folder (with modules.json)")
    elif bidirectional not in ((None, False, "vision") if family.image_bidirectional else (None, False)):
        raise ConfigError(f"{where}: use_bidirectional_attention = {bidirectional!r} is not supported")
    switches = family_switches(family)
    if family.image_bidirectional:
        switches["media_blocks"] = family.vision_blocks if bidirectional == "vision" else "none"
    f.expect("mlp_bias", (False,))
    f.expect("pretraining_tp", (1,))
    if f.take("tie_word_embeddings", bool, True) is not True:
        raise ConfigError(f"{where}: tie_word_embeddings = false is not supported (Gemma ties lm_head)")

    theta, local_theta, factor, rotated = _rope(f, family, where)

    layer_types_raw = f.take("layer_types", list, None)
    sliding_window = f.take("sliding_window", int, None) if family.sliding_pattern else None
    if not family.sliding_pattern:
        f.expect("sliding_window", (None,))
        layer_types = sliding_layer_types(family, layers)
    elif layer_types_raw is not None:
        kinds = {"sliding_attention": "sliding", "full_attention": "full"}
        unknown = [t for t in layer_types_raw if not isinstance(t, str) or t not in kinds]
        if unknown:
            raise ConfigError(f"{where}: unsupported layer_types {sorted(set(map(str, unknown)))}")
        layer_types = tuple(kinds[t] for t in layer_types_raw)
        if family.last_layer_global and layer_types and layer_types[-1] != "full":
            layer_types = (*layer_types[:-1], "full")  # as transformers does
    else:
        pattern = raw.get("sliding_window_pattern", family.sliding_pattern)
        if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
            raise ConfigError(f"{where}: sliding_window_pattern = {pattern!r} is not supported")
        layer_types = sliding_layer_types(dataclasses.replace(family, sliding_pattern=pattern), layers)

    if family.altup:  # transformers' Gemma 3n has no attention softcap and never reads one
        f.expect("attn_logit_softcapping", (None,))
        attn_softcap = None
        final_softcap = f.take("final_logit_softcapping", (int, float, type(None)), family.final_softcap)
    elif family.softcaps:
        # null turns a cap off (transformers checks `is not None`), whatever the family's default.
        attn_softcap = f.take("attn_logit_softcapping", (int, float, type(None)), family.attn_softcap)
        final_softcap = f.take("final_logit_softcapping", (int, float, type(None)), family.final_softcap)
    else:
        f.expect("attn_logit_softcapping", (None,))
        f.expect("final_logit_softcapping", (None,))
        attn_softcap = final_softcap = None
    qpas = f.take("query_pre_attn_scalar", (int, float), head_dim) if family.query_pre_attn_scalar else head_dim

    gemma4 = _gemma4_fields(f, family, layer_types, head_dim, where)
    gemma3n = _gemma3n_fields(f, family, layers, where)
    intermediate = f.take("intermediate_size", (int, list) if family.altup else int, required=True)
    if isinstance(intermediate, list):  # Gemma 3n: one per layer
        if len(intermediate) != layers or len(set(intermediate)) != 1 \
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in intermediate):
            raise ConfigError(f"{where}: intermediate_size {intermediate!r}: only one size for every layer "
                              "is supported")
        intermediate = intermediate[0]
    bos = _token_id(f.take("bos_token_id", (int, list), 2), "bos_token_id", where)
    eos = _token_id(f.take("eos_token_id", (int, list), 1), "eos_token_id", where)
    pad = _token_id(f.take("pad_token_id", (int, list), 0), "pad_token_id", where)
    cfg = GemmaConfig(
        family=family.name,
        vocab_size=f.take("vocab_size", int, required=True),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=f.take("max_position_embeddings", int, 8192),
        rms_norm_eps=float(f.take("rms_norm_eps", (int, float), 1e-6)),
        rope_theta=theta,
        rope_local_theta=local_theta,
        rope_scaling_factor=factor,
        query_pre_attn_scalar=float(qpas),
        attn_softcap=None if attn_softcap is None else float(attn_softcap),
        final_softcap=None if final_softcap is None else float(final_softcap),
        sliding_window=sliding_window if "sliding" in layer_types else None,
        layer_types=layer_types,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        rope_rotated_fraction=rotated,
        **switches,
        **gemma4,
        **gemma3n,
    )
    f.finish()
    try:
        cfg.validate()
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _gemma4_fields(f: Fields, family: Family, layer_types: tuple[str, ...], head_dim: int, where: str) -> dict:
    """Gemma 4's GemmaConfig fields, from the published form (global_head_dim,
    num_global_key_value_heads) or the one transformers 5.24 saves (per_layer_config)."""
    if not family.per_layer_fields:
        return {}
    k_eq_v = f.take("attention_k_eq_v", bool, False)
    global_dim = f.take("global_head_dim", int, None)
    global_kv = f.take("num_global_key_value_heads", int, None)
    overrides = f.take("per_layer_config", dict, None)
    if overrides is not None:
        global_dim, global_kv = _per_layer_config(overrides, layer_types, head_dim, global_dim, global_kv, where)
    # Gemma 4 Unified has neither (its config refuses these fields): left in f.raw, finish() names them.
    moe = family.inputs_and_experts and f.take("enable_moe_block", bool, False)
    experts = f.take("num_experts", int, None) if moe else None
    top_k = f.take("top_k_experts", int, None) if moe else None
    moe_width = f.take("moe_intermediate_size", int, None) if moe else None
    if moe and not (experts and top_k and moe_width):
        raise ConfigError(f"{where}: enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size")
    if family.inputs_and_experts and not moe:  # the fields of a disabled block are unread
        for name in ("num_experts", "top_k_experts", "moe_intermediate_size"):
            f.take(name, int, None)
    per_layer_width = f.take("hidden_size_per_layer_input", int, 256) if family.inputs_and_experts else 0
    per_layer_vocab = f.take("vocab_size_per_layer_input", int, 262_144) if family.inputs_and_experts else 0
    if per_layer_width and not per_layer_vocab:  # GemmaConfig's projection-only form is EmbeddingGemma 2's
        raise ConfigError(f"{where}: vocab_size_per_layer_input = 0 with per-layer inputs is not supported")
    return {
        "global_head_dim": global_dim if global_dim is not None else 512,  # transformers' default
        # transformers applies num_global_key_value_heads only when attention_k_eq_v is set
        "num_global_kv_heads": global_kv if k_eq_v else None,
        "attention_k_eq_v": k_eq_v,
        "hidden_size_per_layer_input": per_layer_width,
        "vocab_size_per_layer_input": per_layer_vocab if per_layer_width else 0,  # no table: unused
        "num_kv_shared_layers": f.take("num_kv_shared_layers", int, 0),
        "double_wide_mlp": f.take("use_double_wide_mlp", bool, False),
        "num_experts": experts if moe else 0,
        "top_k_experts": top_k if moe else 0,
        "moe_intermediate_size": moe_width if moe else 0,
    }


def _gemma3n_fields(f: Fields, family: Family, layers: int, where: str) -> dict:
    """Gemma 3n's GemmaConfig fields, with transformers' defaults for those a config leaves out."""
    if not family.altup:
        return {}
    # Training-only: the coefficient clip (transformers clamps only while training), the learning-rate
    # multiplier of the published configs, and query_pre_attn_scalar, which its attention never
    # reads (the scale is 1.0; the q/k norms set it).
    f.take("altup_coef_clip", (int, float, type(None)), None)
    f.take("altup_lr_multiplier", (int, float), None)
    f.take("query_pre_attn_scalar", (int, float), None)
    fields = {
        "altup_num_inputs": f.take("altup_num_inputs", int, 4),
        "altup_active_idx": f.take("altup_active_idx", int, 0),
        "altup_correct_scale": f.take("altup_correct_scale", bool, True),
        "laurel_rank": f.take("laurel_rank", int, 64),
        "hidden_size_per_layer_input": f.take("hidden_size_per_layer_input", int, 256),
        "vocab_size_per_layer_input": f.take("vocab_size_per_layer_input", int, 262_144),
        "num_kv_shared_layers": f.take("num_kv_shared_layers", int, 15),
    }
    for name in ("altup_num_inputs", "laurel_rank", "hidden_size_per_layer_input"):
        if fields[name] < 1:
            raise ConfigError(f"{where}: {name} = {fields[name]} is not supported (Gemma 3n's layers have them)")
    pattern = f.take("activation_sparsity_pattern", list, None)
    if pattern is None:  # transformers' default: the first 10 layers at 0.95 when there are more than 10
        sparse = 10 if layers > 10 else 0
        pattern = [0.95] * sparse + [0.0] * (layers - sparse)
    if len(pattern) != layers or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 1
                                         for t in pattern):
        raise ConfigError(f"{where}: activation_sparsity_pattern needs one target in [0, 1) per layer "
                          f"({layers}), got {pattern!r}")
    fields["activation_sparsity"] = tuple(float(t) for t in pattern) if any(pattern) else ()
    return fields


def _per_layer_config(overrides: dict, layer_types: tuple[str, ...], head_dim: int, global_dim: int | None,
                      global_kv: int | None, where: str) -> tuple[int | None, int | None]:
    """(global head_dim, global KV heads) from transformers 5.24's per-layer overrides: a map from
    layer index (a string, maybe zero-padded) to head_dim / num_key_value_heads. Every full layer
    must agree, and no sliding layer may differ from the global fields."""
    seen: dict[str, set] = {"head_dim": set(), "num_key_value_heads": set()}
    for key, override in overrides.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 10
                and int(key) < len(layer_types)) or not isinstance(override, dict):
            raise ConfigError(f"{where}: per_layer_config entry {key!r} is not a layer index with its overrides")
        unknown = sorted(set(override) - set(seen))
        if unknown:
            raise ConfigError(f"{where}: per_layer_config[{key!r}] overrides {names(unknown)}, which is not "
                              "supported (head_dim, num_key_value_heads)")
        if layer_types[int(key)] != "full":
            raise ConfigError(f"{where}: per_layer_config[{key!r}] overrides a sliding-window layer; not supported")
        for name, value in override.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}: per_layer_config[{key!r}].{name} = {value!r} is not an integer")
            seen[name].add(value)
    for name in seen:
        if len(seen[name]) > 1:
            raise ConfigError(f"{where}: per_layer_config gives full layers different {name} values {sorted(seen[name])}")
    dims, heads = seen["head_dim"], seen["num_key_value_heads"]
    return (next(iter(dims)) if dims else global_dim if global_dim is not None else head_dim,
            next(iter(heads)) if heads else global_kv)


def _rope_entry(entry: Any, where: str, what: str, family: Family) -> tuple[float, float, float]:
    """(theta, factor dividing the frequencies, rotated fraction) from one transformers
    rope_parameters/rope_scaling dict."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {what} = {entry!r} is not an object")
    entry = dict(entry)
    rope_type = entry.pop("rope_type", entry.pop("type", "default"))
    theta = entry.pop("rope_theta", None)
    factor, rotated = 1.0, 1.0
    if rope_type == "linear":
        factor = entry.pop("factor", None)
        if not isinstance(factor, (int, float)) or factor <= 0:
            raise ConfigError(f"{where}: {what} linear scaling needs a positive factor")
    elif rope_type == "proportional" and family.proportional_rope:
        # transformers' proportional RoPE: partial_rotary_factor of the frequency pairs rotate,
        # counted against the whole head_dim; an optional factor divides the frequencies.
        factor = entry.pop("factor", 1.0)
        rotated = entry.pop("partial_rotary_factor", 1.0)
        if not isinstance(factor, (int, float)) or factor <= 0 or not isinstance(rotated, (int, float)) \
                or not 0 < rotated <= 1:
            raise ConfigError(f"{where}: {what}: proportional RoPE needs a positive factor and a "
                              "partial_rotary_factor in (0, 1]")
    elif rope_type != "default":
        supported = "default, linear, proportional" if family.proportional_rope else "default, linear"
        raise ConfigError(f"{where}: {what} rope_type {rope_type!r} is not supported ({supported})")
    if entry:
        raise ConfigError(f"{where}: {what} has unsupported field(s): {names(sorted(entry))}")
    if theta is not None and not isinstance(theta, (int, float)):
        raise ConfigError(f"{where}: {what} rope_theta = {theta!r} is not a number")
    return (None if theta is None else float(theta)), float(factor), float(rotated)


def _rope(f: Fields, family: Family, where: str) -> tuple[float, float, float, float]:
    """(global theta, local theta, global factor, global rotated fraction) from either config form."""
    params = f.take("rope_parameters", dict, None)
    theta = f.take("rope_theta", (int, float), None)
    local = f.take("rope_local_base_freq", (int, float), None)
    scaling = f.take("rope_scaling", dict, None)
    factor, rotated = 1.0, 1.0
    if params is not None:  # transformers 5.x
        if set(params) <= {"sliding_attention", "full_attention"} and params:
            g_theta, factor, rotated = _rope_entry(params.get("full_attention", {}), where,
                                                   "rope_parameters.full_attention", family)
            l_theta, l_factor, l_rotated = _rope_entry(params.get("sliding_attention", {}), where,
                                                       "rope_parameters.sliding_attention", family)
            if (l_factor, l_rotated) != (1.0, 1.0):
                raise ConfigError(f"{where}: RoPE scaling on sliding-window layers is not supported")
            theta = g_theta if g_theta is not None else theta
            local = l_theta if l_theta is not None else local
        else:
            p_theta, factor, rotated = _rope_entry(params, where, "rope_parameters", family)
            theta = p_theta if p_theta is not None else theta
    if scaling is not None:  # transformers 4.x
        s_theta, factor, rotated = _rope_entry(scaling, where, "rope_scaling", family)
        theta = s_theta if s_theta is not None else theta
    theta = float(theta) if theta is not None else family.rope_theta
    if family.rope_local_theta is not None:
        local = float(local) if local is not None else family.rope_local_theta
    else:
        if local is not None and float(local) != theta:
            raise ConfigError(f"{where}: rope_local_base_freq is not part of {family.name} (a separate local RoPE base)")
        local = theta
    if factor != 1.0 and not family.rope_scaling:
        raise ConfigError(f"{where}: RoPE scaling is not part of {family.name}")
    return theta, local, factor, rotated
