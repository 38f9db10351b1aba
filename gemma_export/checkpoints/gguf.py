"""A GGUF file (llama.cpp's format) as a Source.

The config comes from the metadata plus the facts of each family that GGUF does not store; the
weights are dequantized to fp32 a range of rows at a time and renamed to HF's names; the
tokenizer is rebuilt as a SentencePiece model. Where llama.cpp and transformers differ, the
comment says which one is followed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from gemma_export.checkpoints.base import Source, check_weights
from gemma_export.checkpoints.chat_template import gguf_template
from gemma_export.checkpoints import gguf_blocks, gguf_gemma4
from gemma_export.checkpoints.gguf_header import check_header
from gemma_export.checkpoints.gguf_tokenizer import sentencepiece_model_from_gguf
from gemma_export.checkpoints.hf_config import layer_count
from gemma_export.errors import CheckpointError, ConfigError, names
from gemma_export.quantization.blocks import Quantized, Scheme
from gemma_graphs.config import FAMILIES, Family, GemmaConfig, InvalidConfig, family_switches, sliding_layer_types

ARCHITECTURES = tuple(FAMILIES)  # GGUF architecture names are the family names

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 1 has a single norm before the MLP: llama.cpp calls it ffn_norm, HF post_attention_layernorm.
_GEMMA1_LAYER_NAMES = {**_LAYER_NAMES, "ffn_norm": "post_attention_layernorm"}
_LAYER_TENSOR = re.compile(r"blk\.([0-9]{1,9})\.(\w+)\.weight")

# GGUF stores no query_pre_attn_scalar; llama.cpp (after gemma_pytorch) uses hidden / heads for the
# 27B models, recognised by their layer count, and head_dim for every other size.
_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_MIB = 1 << 20
_V = gguf.GGUFValueType
_INT_TYPES = {_V.UINT8, _V.INT8, _V.UINT16, _V.INT16, _V.UINT32, _V.INT32, _V.UINT64, _V.INT64}
_FLOAT_TYPES = {_V.FLOAT32, _V.FLOAT64}


def open_gguf(path: Path) -> Source:
    """Open a Gemma, Gemma 2 or Gemma 3 GGUF file for export."""
    path = Path(path)
    where = str(path)
    reader = _open_reader(path)
    meta = _Metadata(reader, where)
    arch = meta.architecture()
    tensors = _map_tensors(reader, arch, where)
    rope_freqs = tensors.pop(gguf_gemma4.ROPE_FREQS, None)
    cfg = _config(meta, arch, tensors, rope_freqs, where)
    weights = GGUFWeights(tensors, where)
    check_weights(cfg, weights, where)
    for name in weights.names():  # fail now, not mid-export, on a type that cannot be dequantized
        weights.read_rows(name, 0, 1)
    # Gemma 4's vocabulary is BPE (tokenizer.ggml.model "gemma4"), not SentencePiece: not rebuilt,
    # so such an export carries no tokenizer (export the HF folder for one).
    sentencepiece = reader.fields.get("tokenizer.ggml.model") is not None and arch != "gemma4"
    tokenizer = sentencepiece_model_from_gguf(reader, where) if sentencepiece else None
    return Source(
        config=cfg,
        weights=weights,
        tokenizer_model=tokenizer,
        generation_config=None,
        fingerprints={path.name: _fingerprint(reader)},
        description=f"GGUF file {path} ({arch})",
        chat_template=gguf_template(reader.fields, where),
    )


class _Reader(gguf.GGUFReader):
    """GGUFReader over a plain ndarray view of its memmap (the memmap subclass makes each of the
    reader's million small slices slow: 9 s instead of 3 s for a 262k-token vocabulary), reading an
    array of numbers as one view: the reader's own way keeps a view per item, about 350 bytes and
    some microseconds each (a file of 1 MB of uint8 items held 340 MB for 18 s)."""

    @property
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._plain_data = value.view(np.ndarray)

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list[int], list]:
        if raw_type == _V.ARRAY:
            item, count = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            kind = _V(int(item[0]))
            number = self.gguf_scalar_to_np.get(kind)
            if number is not None:  # parts and indices as the reader's contents() reads them back
                values = self._get(orig_offs + 12, number, count[0])
                return 12 + int(values.nbytes), [item, count, values], [2], [_V.ARRAY] + ([kind] if count[0] else [])
        return super()._get_field_parts(orig_offs, raw_type)


def _open_reader(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    check_header(path)  # the reader trusts the header's counts: they are checked against the file first
    try:
        return _Reader(path)
    except Exception as e:  # the gguf parser fails on bad input with assorted exception types
        detail = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"{path}: not a valid GGUF file, corrupt or truncated ({detail})") from None


class _Metadata:
    """Typed metadata access. Every `{arch}.` key must be read (understood) or it is an error."""

    _REQUIRED = object()

    def __init__(self, reader: gguf.GGUFReader, where: str):
        self.fields = reader.fields
        self.where = where
        self.used: set[str] = set()

    def architecture(self) -> str:
        arch = self.get("general.architecture", str)
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"{self.where}: GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
        split = self.get("split.count", int, 1)
        if split != 1:
            raise CheckpointError(
                f"{self.where}: part of a GGUF split into {split} files; merge it first (llama-gguf-split --merge)")
        return arch

    def get(self, key: str, kind: type, default: Any = _REQUIRED) -> Any:
        """The value of `key` as int, float, str, bool or list; `default` when absent."""
        self.used.add(key)
        field = self.fields.get(key)
        if field is None:
            if default is self._REQUIRED:
                raise ConfigError(f"{self.where}: metadata {key!r} is missing")
            return default
        types = list(field.types)
        ok = {
            int: types and types[0] in _INT_TYPES,
            float: types and types[0] in _INT_TYPES | _FLOAT_TYPES,
            str: types == [_V.STRING],
            bool: types == [_V.BOOL],
            list: types[:1] == [_V.ARRAY],
        }[kind]
        if not ok or (kind is not list and len(types) != 1):
            raise ConfigError(
                f"{self.where}: metadata {key!r} has type {[t.name for t in types]}, expected {kind.__name__}")
        try:
            value = field.contents()
        except Exception as e:  # garbage the parser let through
            raise CheckpointError(f"{self.where}: metadata {key!r} is unreadable ({e})") from None
        if types == [_V.FLOAT32]:
            # The shortest decimal that is this float32: the value the converter wrote (1e-6, not 9.99e-7).
            return float(str(np.float32(value)))
        return float(value) if kind is float else value

    def check_all_read(self, arch: str) -> None:
        unread = sorted(k for k in self.fields if k.startswith(arch + ".") and k not in self.used)
        if unread:
            raise ConfigError(f"{self.where}: unsupported GGUF metadata: {names(unread)}")


@dataclasses.dataclass(frozen=True)
class _Tensor:
    gguf_name: str
    shape: tuple[int, ...]  # HF order: [out, in], the reverse of GGUF's ne
    qtype: gguf.GGMLQuantizationType
    data: np.ndarray  # the reader's view of the file, rows first
    norm: bool  # stored as 1 + w


def _map_tensors(reader: gguf.GGUFReader, arch: str, where: str) -> dict[str, _Tensor]:
    layer_names = _LAYER_NAMES if FAMILIES[arch].sandwich_norms else _GEMMA1_LAYER_NAMES
    stored_plus_one = FAMILIES[arch].norm_offset == 1.0  # llama.cpp stores Gemma 1-3's norms as 1 + w
    tensors: dict[str, _Tensor] = {}
    for t in reader.tensors:
        if arch == "gemma4":
            hf = gguf_gemma4.ROPE_FREQS if t.name == gguf_gemma4.ROPE_FREQS else gguf_gemma4.hf_name(t.name)
        else:
            hf = _hf_name(t.name, layer_names)
        if hf is None:
            raise CheckpointError(f"{where}: unexpected tensor {t.name!r} for a {arch} model")
        if hf in tensors:
            raise CheckpointError(f"{where}: tensors {tensors[hf].gguf_name!r} and {t.name!r} both map to {hf!r}")
        tensors[hf] = _Tensor(
            gguf_name=t.name,
            shape=tuple(int(n) for n in reversed(t.shape)),
            qtype=t.tensor_type,
            data=t.data,
            norm=stored_plus_one and "norm" in t.name,
        )
    _check_output_head(tensors, where)
    return tensors


def _hf_name(name: str, layer_names: dict[str, str]) -> str | None:
    m = _LAYER_TENSOR.fullmatch(name)
    if m and m.group(2) in layer_names:
        return f"model.layers.{int(m.group(1))}.{layer_names[m.group(2)]}.weight"
    stem = name.removesuffix(".weight")
    if name.endswith(".weight") and stem in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[stem] + ".weight"
    return None


def _check_output_head(tensors: dict[str, _Tensor], where: str) -> None:
    """Gemma ties lm_head to the embedding; a stored copy must at least have its shape."""
    head, embed = tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")
    if head is not None and (embed is None or head.shape != embed.shape):
        raise CheckpointError(
            f"{where}: an untied output head ('output.weight', shape {list(head.shape)}) is not supported; "
            "Gemma ties lm_head to the embedding")


def _config(meta: _Metadata, arch: str, tensors: dict[str, _Tensor], rope_freqs: _Tensor | None,
            where: str) -> GemmaConfig:
    p = arch + "."
    common = {"vocab_size": _vocab_size(meta, p, tensors, where),  # read alike for every family
              "max_position_embeddings": meta.get(p + "context_length", int),
              "rms_norm_eps": meta.get(p + "attention.layer_norm_rms_epsilon", float, 1e-6),  # every Gemma's eps
              "bos_token_id": meta.get("tokenizer.ggml.bos_token_id", int, 2),
              "eos_token_id": meta.get("tokenizer.ggml.eos_token_id", int, 1),
              "pad_token_id": meta.get("tokenizer.ggml.padding_token_id", int, 0)}
    if arch == "gemma4":
        freqs = None if rope_freqs is None else _dequantize(rope_freqs, rope_freqs.data, where)
        cfg = gguf_gemma4.gemma4_config(lambda key, *kind: meta.get(p + key, *kind),
                                        {name: t.shape for name, t in tensors.items()}, freqs, common, where)
        return _checked(meta, arch, cfg, where)
    layers = layer_count(meta.get(p + "block_count", int), p + "block_count", where)
    hidden = meta.get(p + "embedding_length", int)
    heads = meta.get(p + "attention.head_count", int)
    if heads <= 0:
        raise ConfigError(f"{where}: {p}attention.head_count = {heads} must be positive")
    head_dim = _head_dim(meta, p, heads, tensors, where)
    family = FAMILIES[arch]
    theta, local_theta, factor = _rope(meta, family, where)
    attn_softcap, final_softcap = _softcaps(meta, family, where)
    layer_types = _layer_types(meta, family, layers, where)
    window = _sliding_window(meta, family, where)
    qpas = hidden / heads if layers == _27B_LAYERS.get(arch) else head_dim
    cfg = GemmaConfig(
        family=arch,
        hidden_size=hidden,
        intermediate_size=meta.get(p + "feed_forward_length", int),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=meta.get(p + "attention.head_count_kv", int, heads),
        head_dim=head_dim,
        rope_theta=theta,
        rope_local_theta=local_theta,
        rope_scaling_factor=factor,
        query_pre_attn_scalar=float(qpas),
        attn_softcap=attn_softcap,
        final_softcap=final_softcap,
        sliding_window=window if "sliding" in layer_types else None,
        layer_types=layer_types,
        **family_switches(family),
        **common,
    )
    return _checked(meta, arch, cfg, where)


def _checked(meta: _Metadata, arch: str, cfg: GemmaConfig, where: str) -> GemmaConfig:
    meta.check_all_read(arch)
    try:
        cfg.validate()
    except InvalidConfig as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _head_dim(meta: _Metadata, p: str, heads: int, tensors: dict[str, _Tensor], where: str) -> int:
    head_dim = meta.get(p + "attention.key_length", int, None)
    if head_dim is None:
        # Older files: from the query projection, never from hidden / heads (7B: 16 x 256 != 3072).
        q = tensors.get("model.layers.0.self_attn.q_proj.weight")
        if q is None or not heads or q.shape[0] % heads:
            raise ConfigError(f"{where}: no {p}attention.key_length and no query projection to infer head_dim from")
        head_dim = q.shape[0] // heads
    for key, what in (("attention.value_length", "value length"), ("rope.dimension_count", "RoPE dimension count")):
        value = meta.get(p + key, int, head_dim)
        if value != head_dim:
            raise ConfigError(f"{where}: {p}{key} = {value} (a {what} other than head_dim {head_dim}) is not supported")
    return head_dim


def _vocab_size(meta: _Metadata, p: str, tensors: dict[str, _Tensor], where: str) -> int:
    embed = tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"{where}: tensor 'token_embd.weight' is missing")
    vocab = embed.shape[0]
    tokens = meta.fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else vocab
    stated = meta.get(p + "vocab_size", int, vocab)
    if not vocab == n_tokens == stated:
        raise ConfigError(
            f"{where}: vocabulary sizes disagree: embedding {vocab}, tokenizer {n_tokens}, {p}vocab_size {stated}")
    return vocab


def _rope(meta: _Metadata, family: Family, where: str) -> tuple[float, float, float]:
    """(global theta, local theta, linear factor of the global layers); absent: the family's."""
    p = family.name + "."
    theta = meta.get(p + "rope.freq_base", float, family.rope_theta)
    local = meta.get(p + "rope.freq_base_swa", float, None)
    factor = _rope_scaling(meta, p, where)
    if factor != 1.0 and not family.rope_scaling:
        raise ConfigError(f"{where}: RoPE scaling is not part of {family.name}")
    if family.rope_local_theta is not None:
        # llama.cpp's converter does not store Gemma 3's local base.
        return theta, family.rope_local_theta if local is None else local, factor
    if local is not None and local != theta:
        raise ConfigError(f"{where}: {p}rope.freq_base_swa (a separate local RoPE base) is not part of {family.name}")
    return theta, theta, factor


def _rope_scaling(meta: _Metadata, p: str, where: str) -> float:
    """Linear factor; as in llama.cpp, a factor without a type is linear, and 0 means none."""
    kind = meta.get(p + "rope.scaling.type", str, None)
    factor = meta.get(p + "rope.scaling.factor", float, None)
    legacy = meta.get(p + "rope.scale_linear", float, None)  # the key before rope.scaling.factor
    if factor is None:
        factor = legacy
    if kind not in (None, "none", "linear"):
        raise ConfigError(f"{where}: {p}rope.scaling.type = {kind!r} is not supported (none, linear)")
    if factor is None or factor == 0.0:
        return 1.0
    if kind == "none" and factor != 1.0:
        raise ConfigError(f"{where}: {p}rope.scaling.type is 'none' but the scaling factor is {factor}")
    if factor < 0:
        raise ConfigError(f"{where}: {p}rope.scaling.factor = {factor} must be positive")
    return factor


def _softcaps(meta: _Metadata, family: Family, where: str) -> tuple[float | None, float | None]:
    p = family.name + "."
    attn = meta.get(p + "attn_logit_softcapping", float, None)
    final = meta.get(p + "final_logit_softcapping", float, None)
    if not family.softcaps:
        if attn is not None or final is not None:
            raise ConfigError(f"{where}: logit soft-capping is not part of {family.name}")
        return None, None
    # Absent in old files: the family's values (Gemma 2's, as llama.cpp assumes; Gemma 3 has none,
    # and transformers honours them when set).
    attn = family.attn_softcap if attn is None else attn
    final = family.final_softcap if final is None else final
    for name, value in (("attn_logit_softcapping", attn), ("final_logit_softcapping", final)):
        if value is not None and value <= 0:
            raise ConfigError(f"{where}: {p}{name} = {value} must be positive")
    return attn, final


def _layer_types(meta: _Metadata, family: Family, layers: int, where: str) -> tuple[str, ...]:
    key = family.name + ".attention.sliding_window_pattern"
    pattern = meta.get(key, list, None) if _is_array(meta, key) else meta.get(key, int, None)
    if family.sliding_pattern is None:
        if pattern is not None:
            raise ConfigError(f"{where}: {key}: {family.name} has no sliding-window layers")
        return sliding_layer_types(family, layers)
    if pattern is None:
        return sliding_layer_types(family, layers)
    if isinstance(pattern, list):  # one flag per layer, true = sliding window
        if len(pattern) != layers or not all(isinstance(b, bool) for b in pattern):
            raise ConfigError(f"{where}: {key} is not one boolean per layer")
        return tuple("sliding" if b else "full" for b in pattern)
    if pattern < 0:
        raise ConfigError(f"{where}: {key} = {pattern} is not supported")
    # llama.cpp's set_swa_pattern: every n-th layer is global, 0 means all are sliding.
    return tuple("sliding" if pattern == 0 or i % pattern < pattern - 1 else "full" for i in range(layers))


def _is_array(meta: _Metadata, key: str) -> bool:
    field = meta.fields.get(key)
    return field is not None and field.types[:1] == [_V.ARRAY]


def _sliding_window(meta: _Metadata, family: Family, where: str) -> int | None:
    key = family.name + ".attention.sliding_window"
    if family.sliding_pattern is None:
        if key in meta.fields:
            raise ConfigError(f"{where}: {key}: {family.name} has no sliding-window layers")
        return None
    default = family.gguf_sliding_window if family.gguf_sliding_window is not None else _Metadata._REQUIRED
    window = meta.get(key, int, default)
    if window <= 0:
        raise ConfigError(f"{where}: {key} = {window} must be positive")
    return window


class GGUFWeights:
    """The tensors of a GGUF file under HF names, dequantized to float32 on read.

    Quantization blocks run along a row, so a range of rows is a contiguous slice of the file
    that dequantizes on its own: a read costs memory for the rows asked for only.
    """

    def __init__(self, tensors: dict[str, _Tensor], where: str):
        self._tensors = tensors
        self._where = where

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self._tensors[name]
        if not 0 <= start <= stop <= t.shape[0]:
            raise ValueError(f"rows [{start}, {stop}) out of range for {name!r} of shape {list(t.shape)}")
        if start == stop:  # the quant kernels fail on no data
            return np.zeros((0, *t.shape[1:]), np.float32)
        if len(t.shape) == 1:  # small, and a 1-D quantized tensor has no rows to slice
            values = _dequantize(t, t.data, self._where)[start:stop]
        else:
            values = _dequantize(t, t.data[start:stop], self._where)
        out = np.array(values, dtype=np.float32).reshape((stop - start, *t.shape[1:]))
        if t.norm:
            out -= 1.0  # GGUF stores Gemma's norm weights as 1 + w
        return out

    def source_type(self, name: str) -> str:
        return self._tensors[name].qtype.name

    def kept_as_blocks(self, name: str) -> bool:
        """Whether `--quant source` keeps this tensor's blocks (a 2-D tensor of a decoded type)."""
        t = self._tensors[name]
        return len(t.shape) == 2 and t.qtype in gguf_blocks.DECODERS and not t.norm

    def read_blocks(self, name: str, start: int, stop: int) -> tuple[Quantized, Scheme]:
        t = self._tensors[name]
        return gguf_blocks.decode(np.asarray(t.data[start:stop]), t.qtype, t.shape[1])


def _dequantize(t: _Tensor, raw: np.ndarray, where: str) -> np.ndarray:
    try:
        return gguf.quants.dequantize(raw, t.qtype)
    except NotImplementedError:
        raise CheckpointError(
            f"{where}: tensor {t.gguf_name!r} has type {t.qtype.name}, which cannot be dequantized") from None
    except Exception as e:
        raise CheckpointError(f"{where}: tensor {t.gguf_name!r} ({t.qtype.name}) is unreadable ({e})") from None


def _fingerprint(reader: gguf.GGUFReader) -> str:
    """Size and a hash of the header (metadata, tensor table) and the last MiB: cheap for any size."""
    data = reader.data
    size = data.nbytes
    digest = hashlib.sha256(data[:reader.data_offset])
    digest.update(data[max(reader.data_offset, size - _MIB):])
    return f"size:{size} sha256-header-last-MiB:{digest.hexdigest()}"
