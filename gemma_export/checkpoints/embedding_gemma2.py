"""EmbeddingGemma 2 (transformers' embedding_gemma2, a Gemma 4 body as an encoder): its config ->
the body's GemmaConfig and the projection to the embedding width; its tensors under
GemmaEmbedder's names; its image and audio towers skipped and named. Every config field is
understood or an error, as hf_config.py does for the decoders.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gemma_export.checkpoints.base import RenamedWeights, WeightSource, check_weights
from gemma_export.checkpoints.hf_config import Fields, _per_layer_config, _rope, _token_id, layer_count
from gemma_export.checkpoints.json_files import read_json
from gemma_export.checkpoints.safetensors_dir import folder_weights
from gemma_export.errors import CheckpointError, ConfigError
from gemma_graphs.config import FAMILIES, Dense, GemmaConfig, InvalidConfig, family_switches, sliding_layer_types

MODEL_TYPES = ("embedding_gemma2", "embedding_gemma2_text")
_TOWER_CONFIGS = {"vision_config": "vision", "audio_config": "audio"}
_TOWER_TENSORS = {"vision_tower.": "vision", "embed_vision.": "vision", "audio_tower.": "audio",
                  "embed_audio.": "audio"}
_PLACEHOLDER_IDS = ("boi_token_id", "eoi_token_id", "image_token_id", "video_token_id", "boa_token_id",
                    "eoa_token_index", "audio_token_id")
_PREFIXES = ("model.language_model.", "language_model.", "model.", "")  # the text model's, as saved
_LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}


@dataclasses.dataclass(frozen=True)
class Body:
    """An embedding model's body as its readers hand it over."""

    text: GemmaConfig
    head: tuple[Dense, ...]  # dense layers the body applies before pooling (moved after it: linear)
    names: dict[str, tuple[WeightSource, str]]  # GemmaEmbedder's name -> (source, stored name)
    fingerprints: dict[str, str]
    skipped: tuple[str, ...]  # towers present and not exported ("vision", "audio")


def is_embedding_gemma2(folder: Path) -> bool:
    path = folder / "config.json"
    if not path.is_file():
        return False
    raw = read_json(path)
    return isinstance(raw, dict) and raw.get("model_type") in MODEL_TYPES


def parse_config(raw: dict, where: str) -> tuple[GemmaConfig, int, tuple[str, ...]]:
    """(the body's config, the embedding width, the towers the config declares)."""
    towers: tuple[str, ...] = ()
    if raw.get("model_type") == "embedding_gemma2":
        f = Fields(raw, where)
        f.raw.pop("model_type")
        text = dict(f.take("text_config", dict, required=True))
        towers = tuple(name for key, name in _TOWER_CONFIGS.items() if f.take(key, dict, None) is not None)
        for key in _PLACEHOLDER_IDS:  # the towers' placeholders: text alone has none
            f.take(key, int, None)
        f.finish()
        text.setdefault("model_type", "embedding_gemma2_text")
        raw, where = text, f"{where} text_config"
    if raw.get("model_type") != "embedding_gemma2_text":
        raise ConfigError(f"{where}: model_type {raw.get('model_type')!r} is not embedding_gemma2_text")
    text, width = _text_config(raw, where)
    return text, width, towers


def _text_config(raw: dict, where: str) -> tuple[GemmaConfig, int]:
    family = FAMILIES["embedding_gemma2"]
    f = Fields(raw, where)
    f.raw.pop("model_type")
    head_dim = f.take("head_dim", int, 256)
    layers = layer_count(f.take("num_hidden_layers", int, 24), "num_hidden_layers", where)
    f.expect("hidden_activation", ("gelu_pytorch_tanh",))
    f.expect("attention_bias", (False,))
    types = f.take("layer_types", list, None)
    if types is None:
        layer_types = sliding_layer_types(family, layers)
    else:
        unknown = sorted({str(t) for t in types if not isinstance(t, str) or t not in _LAYER_TYPES})
        if unknown:
            raise ConfigError(f"{where}: unsupported layer_types {unknown}")
        layer_types = tuple(_LAYER_TYPES[t] for t in types)
        layer_types = (*layer_types[:-1], "full") if layer_types else ()  # the last is full, as transformers forces
    radius = f.take("sliding_window", int, 512)  # inclusive radius of a symmetric window
    theta, local, factor, rotated = _rope(f, family, where)
    overrides = f.take("per_layer_config", dict, None)
    # without per_layer_config, transformers' defaults: full layers of head_dim 512 and 1 KV head
    global_dim, global_kv = (512, 1) if overrides is None else _per_layer_config(overrides, layer_types, head_dim,
                                                                                None, None, where)
    width = f.take("embedding_dim", int, 768)
    cfg = GemmaConfig(
        family=family.name,
        vocab_size=f.take("vocab_size", int, 262_144),
        hidden_size=f.take("hidden_size", int, 512),
        intermediate_size=f.take("intermediate_size", int, 2048),
        num_layers=layers,
        num_heads=f.take("num_attention_heads", int, 4),
        num_kv_heads=f.take("num_key_value_heads", int, 2),
        head_dim=head_dim,
        max_position_embeddings=f.take("max_position_embeddings", int, 262_144),
        rms_norm_eps=float(f.take("rms_norm_eps", (int, float), 1e-6)),
        rope_theta=theta,
        rope_local_theta=local,
        rope_scaling_factor=factor,
        query_pre_attn_scalar=float(head_dim),  # unused: the q/k norms set the scale
        attn_softcap=None,
        final_softcap=None,
        # GemmaEmbedder's sliding layers see sliding_window // 2 either side (EmbeddingGemma's form)
        sliding_window=2 * radius if "sliding" in layer_types and radius > 0 else None,
        layer_types=layer_types,
        bos_token_id=_token_id(f.take("bos_token_id", (int, list), 2), "bos_token_id", where),
        eos_token_id=_token_id(f.take("eos_token_id", (int, list), 1), "eos_token_id", where),
        pad_token_id=_token_id(f.take("pad_token_id", (int, list), 0), "pad_token_id", where),
        rope_rotated_fraction=rotated,
        global_head_dim=global_dim,
        num_global_kv_heads=global_kv,  # full layers' own KV heads, without K = V (unlike Gemma 4)
        hidden_size_per_layer_input=f.take("hidden_size_per_layer_input", int, 512),
        vocab_size_per_layer_input=0,  # per-layer inputs from the projection alone
        **family_switches(family),
    )
    f.finish()
    if width < 1:
        raise ConfigError(f"{where}: embedding_dim must be positive, got {width}")
    try:
        cfg.validate()
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg, width


def open_body(folder: Path) -> Body:
    """The body of a folder whose config.json is an embedding_gemma2 (or _text) config."""
    where = folder / "config.json"
    raw = read_json(where)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    text, width, towers = parse_config(raw, str(where))
    source, fingerprints = folder_weights(folder)
    stored = source.names()
    prefix = next((p for p in _PREFIXES if f"{p}embed_tokens.weight" in stored), None)
    if prefix is None:
        raise CheckpointError(f"{folder}: no text model's embed_tokens.weight under any of {list(_PREFIXES)}")
    names: dict[str, tuple[WeightSource, str]] = {}
    skipped = set(towers)
    for name in stored:
        tower = next((t for p, t in _TOWER_TENSORS.items() if name.removeprefix("model.").startswith(p)), None)
        if tower is not None:
            skipped.add(tower)
        elif not name.startswith(prefix):
            raise CheckpointError(f"{folder}: unexpected tensor {name!r} (neither the text model nor a tower)")
        else:
            names[_our_name(name[len(prefix):])] = (source, name)
    body_only = {n: v for n, v in names.items() if n.startswith("model.")}
    check_weights(text, RenamedWeights(body_only), str(folder))
    head = (Dense(text.hidden_size, width, bias=False),)
    return Body(text, head, names, fingerprints, tuple(t for t in ("vision", "audio") if t in skipped))


def _our_name(name: str) -> str:
    """A text-model tensor's name in GemmaEmbedder: the projection is dense 0, the per-layer
    block's and the per-layer projection's tensors sit directly on the layer and the body."""
    if name == "embedding_projection.weight":
        return "dense.0.weight"
    name = re.sub(r"^layers\.(\d+)\.ple_block\.", r"layers.\1.", name)
    return "model." + name.removeprefix("ple.")
