"""Rebuilding Gemma's SentencePiece model from the vocabulary a GGUF file stores.

llama.cpp keeps the pieces, scores and types of the original tokenizer.model (its token types
use SentencePiece's numbering) but changes three things, undone here (the result was checked piece
for piece against Google's Gemma 3 tokenizer):
- `<unk>` is marked CONTROL: it must be UNKNOWN;
- the whitespace-run pieces hold literal spaces: SentencePiece spells them with U+2581;
- special tokens (`<start_of_turn>`, `<unusedN>`, ...) are CONTROL, which SentencePiece never
  matches in text: all but bos/eos/pad become USER_DEFINED, as in the original.
"""

from __future__ import annotations

from typing import Any

import gguf
from sentencepiece import sentencepiece_model_pb2 as spm

from gemma_export.errors import CheckpointError

_Piece = spm.ModelProto.SentencePiece
_V = gguf.GGUFValueType
_ARRAY = _V.ARRAY
_SPACE = "\u2581"
_SPECIAL_IDS = {  # key -> (trainer_spec field, default id in every Gemma tokenizer)
    "tokenizer.ggml.padding_token_id": ("pad", 0),
    "tokenizer.ggml.eos_token_id": ("eos", 1),
    "tokenizer.ggml.bos_token_id": ("bos", 2),
}


def sentencepiece_model_from_gguf(reader: gguf.GGUFReader, where: str = "GGUF file") -> bytes:
    """A serialized SentencePiece ModelProto equivalent to the tokenizer the GGUF was made from."""
    model = _field(reader, "tokenizer.ggml.model", where, _V.STRING)
    if model != "llama":  # llama.cpp's name for a SentencePiece vocabulary
        raise CheckpointError(
            f"{where}: tokenizer.ggml.model = {model!r} is not supported (Gemma uses 'llama', SentencePiece)")
    if "tokenizer.ggml.precompiled_charsmap" in reader.fields:
        raise CheckpointError(f"{where}: a tokenizer with a precompiled normalizer is not supported")
    tokens = _field(reader, "tokenizer.ggml.tokens", where, _ARRAY, _V.STRING)
    scores = _field(reader, "tokenizer.ggml.scores", where, _ARRAY, _V.FLOAT32)
    types = _field(reader, "tokenizer.ggml.token_type", where, _ARRAY, _V.INT32)
    if not (len(tokens) == len(scores) == len(types)) or not tokens:
        raise CheckpointError(
            f"{where}: tokenizer arrays disagree ({len(tokens)} tokens, {len(scores)} scores, {len(types)} types)")
    ids = _special_ids(reader, tokens, types, where)

    proto = spm.ModelProto()
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        p = proto.pieces.add()
        p.piece = piece.replace(" ", _SPACE)  # a raw space can never match: input spaces become U+2581
        p.score = score
        p.type = _piece_type(i, kind, ids, where)
    if len({p.piece for p in proto.pieces}) != len(tokens):
        raise CheckpointError(f"{where}: the tokenizer vocabulary has duplicate pieces")
    _fill_specs(proto, reader, tokens, types, ids, where)
    return proto.SerializeToString()


def _field(reader: gguf.GGUFReader, key: str, where: str, *types: gguf.GGUFValueType) -> Any:
    """A metadata value, checked to have the GGUF types given (all if none are)."""
    field = reader.fields.get(key)
    if field is None:
        raise CheckpointError(f"{where}: metadata {key!r} is missing")
    if types and list(field.types) != list(types):
        raise CheckpointError(f"{where}: metadata {key!r} has type {[t.name for t in field.types]}, "
                              f"expected {[t.name for t in types]}")
    try:
        return field.contents()
    except Exception as e:  # the gguf library raises assorted errors on garbage
        raise CheckpointError(f"{where}: metadata {key!r} is unreadable ({e})") from None


def _special_ids(reader: gguf.GGUFReader, tokens: list, types: list, where: str) -> dict[str, int]:
    ids = {}
    for key, (name, default) in _SPECIAL_IDS.items():
        ids[name] = _field(reader, key, where) if key in reader.fields else default
    if "tokenizer.ggml.unknown_token_id" in reader.fields:
        ids["unk"] = _field(reader, "tokenizer.ggml.unknown_token_id", where)
    else:
        unknown = [i for i, (t, k) in enumerate(zip(tokens, types)) if k == _Piece.UNKNOWN or t == "<unk>"]
        if not unknown:
            raise CheckpointError(f"{where}: the tokenizer has no unknown token")
        ids["unk"] = unknown[0]
    for name, value in ids.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(tokens):
            raise CheckpointError(f"{where}: {name} token id {value!r} is not in the vocabulary")
    if len(set(ids.values())) != len(ids):
        raise CheckpointError(f"{where}: special token ids {ids} are not distinct")
    return ids


def _piece_type(i: int, kind: Any, ids: dict[str, int], where: str) -> int:
    if kind not in _Piece.Type.values():
        raise CheckpointError(f"{where}: token {i} has unknown token type {kind!r}")
    if i == ids["unk"]:
        return _Piece.UNKNOWN
    if i in (ids["bos"], ids["eos"], ids["pad"]):
        return _Piece.CONTROL
    if kind in (_Piece.CONTROL, _Piece.UNKNOWN):
        return _Piece.USER_DEFINED
    return kind


def _fill_specs(proto: spm.ModelProto, reader: gguf.GGUFReader, tokens: list, types: list,
                ids: dict[str, int], where: str) -> None:
    """Trainer and normalizer specs of Gemma's tokenizer.model (only some fields act at encode time)."""
    t = proto.trainer_spec
    t.model_type = spm.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = types.count(_Piece.BYTE) == 256
    t.split_digits = True
    t.allow_whitespace_only_pieces = True
    t.treat_whitespace_as_suffix = False
    for name in ("unk", "bos", "eos", "pad"):
        setattr(t, f"{name}_id", ids[name])
        setattr(t, f"{name}_piece", tokens[ids[name]])
    n = proto.normalizer_spec
    n.name = "identity"
    # llama.cpp writes add_space_prefix False for every Gemma; honour the file if it says otherwise.
    prefix = "tokenizer.ggml.add_space_prefix"
    n.add_dummy_prefix = prefix in reader.fields and _field(reader, prefix, where, _V.BOOL)
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
