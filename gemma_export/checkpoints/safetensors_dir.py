"""HF checkpoint folders: config.json + model.safetensors or shards with an index.

The safetensors header is parsed here (it is JSON, never pickle) and tensors are read with plain
file reads by row ranges, so nothing is memory-mapped and nothing is read before it is written.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from gemma_export.checkpoints.base import Source, check_weights, text_decoder
from gemma_export.checkpoints.chat_template import hf_folder_template
from gemma_export.checkpoints.hf_config import load_hf_config
from gemma_export.checkpoints.json_files import parse_json, read_json
from gemma_export.errors import CheckpointError

_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
_MAX_HEADER = 100 * 1024 * 1024


class _Entry:
    __slots__ = ("path", "dtype", "shape", "begin", "end")

    def __init__(self, path: Path, dtype: str, shape: tuple[int, ...], begin: int, end: int):
        self.path, self.dtype, self.shape, self.begin, self.end = path, dtype, shape, begin, end


def _read_header(path: Path) -> dict[str, _Entry]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file or truncated (header length {n})")
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None
    header = parse_json(text, f"{path}: safetensors header", CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed safetensors header")
    header.pop("__metadata__", None)
    data_start, data_size = 8 + n, size - 8 - n
    entries = {}
    for name, meta in header.items():
        fields = _entry_fields(meta)
        if fields is None:
            raise CheckpointError(f"{path}: malformed header entry for {name!r}")
        dtype, shape, begin, end = fields
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}; supported: F32, F16, BF16")
        if end - begin != math.prod(shape) * _DTYPES[dtype][1]:
            raise CheckpointError(f"{path}: tensor {name!r} has inconsistent offsets")
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, file has {size}")
        entries[name] = _Entry(path, dtype, shape, data_start + begin, data_start + end)
    ranges = sorted((e.begin, e.end, name) for name, e in entries.items() if e.end > e.begin)
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: tensors {first!r} and {second!r} overlap")
    return entries


def _entry_fields(meta: object) -> tuple[str, tuple[int, ...], int, int] | None:
    """(dtype, shape, begin, end) of a well-formed header entry, else None."""
    if not isinstance(meta, dict):
        return None
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not (isinstance(dtype, str) and _counts(shape) and _counts(offsets) and len(offsets) == 2
            and offsets[0] <= offsets[1]):
        return None
    return dtype, tuple(shape), offsets[0], offsets[1]


def _counts(values: object) -> bool:
    """A list of non-negative integers (JSON true is not one)."""
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


class SafetensorsWeights:
    """WeightSource over one or more safetensors files."""

    def __init__(self, entries: dict[str, _Entry]):
        self._entries = entries

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        e = self._entries[name]
        np_dtype, itemsize = _DTYPES[e.dtype]
        row = math.prod(e.shape[1:]) * itemsize
        with open(e.path, "rb") as f:
            f.seek(e.begin + start * row)
            buf = f.read((stop - start) * row)
        if len(buf) != (stop - start) * row:
            raise CheckpointError(f"{e.path}: truncated while reading {name!r}")
        raw = np.frombuffer(buf, dtype=np_dtype).reshape((stop - start, *e.shape[1:]))
        if e.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=e.dtype != "F32")


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, CheckpointError)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: no weight_map of tensor names to shard file names")
        files = sorted(set(weight_map.values()))
        for name in files:
            # A shard is a file of this folder by name: no path may lead elsewhere.
            if "/" in name or "\\" in name or name in ("", ".", "..") or not (folder / name).is_file():
                raise CheckpointError(f"{index}: shard {name!r} is missing")
        return [folder / n for n in files]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise CheckpointError(
            f"{folder}: only pickle (.bin/.pt) weights found; they are never unpickled. "
            "Convert the checkpoint to safetensors first")
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


# Where multimodal checkpoints keep their text decoder, by model_type; transformers 5.24 writes the
# first, other versions wrote the second.
TEXT_PREFIXES = {"gemma3": ("language_model.model.", "model.language_model."),
                 "gemma4": ("model.language_model.", "language_model.model."),
                 "gemma4_unified": ("model.language_model.",),
                 "gemma3n": ("model.language_model.", "language_model.model.")}


def folder_weights(folder: Path) -> tuple[SafetensorsWeights, dict[str, str]]:
    """The folder's safetensors tensors (one file or shards) and each file's fingerprint."""
    entries: dict[str, _Entry] = {}
    fingerprints = {}
    for path in _safetensors_files(folder):
        for name, entry in _read_header(path).items():
            if name in entries:
                raise CheckpointError(f"{path}: tensor {name!r} appears in two shards")
            entries[name] = entry
        st = path.stat()
        fingerprints[path.name] = f"size:{st.st_size}"
    return SafetensorsWeights(entries), fingerprints


def open_hf_folder(folder: Path) -> Source:
    cfg, multimodal, generation = load_hf_config(folder)
    weights, fingerprints = folder_weights(folder)
    stored = weights
    if multimodal is not None:
        weights = text_decoder(weights, TEXT_PREFIXES[multimodal.model_type], str(folder))
    check_weights(cfg, weights, str(folder))
    sentencepiece, tokenizer_json = folder / "tokenizer.model", folder / "tokenizer.json"
    return Source(
        config=cfg,
        weights=weights,
        tokenizer_model=sentencepiece.read_bytes() if sentencepiece.is_file() else None,
        tokenizer_json=tokenizer_json.read_bytes() if tokenizer_json.is_file() and not sentencepiece.is_file() else None,
        generation_config=generation,
        fingerprints=fingerprints,
        description=f"HF folder {folder}" + (f" (the text decoder of a {multimodal.model_type} checkpoint)"
                                              if multimodal else ""),
        multimodal=multimodal,
        folder=folder,
        checkpoint_weights=stored,
        chat_template=hf_folder_template(folder),
    )
