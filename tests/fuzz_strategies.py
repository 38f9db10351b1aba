"""Hypothesis strategies of the parser fuzz cases (tests/fuzz_cases.py runs them): config.json
trees with fields dropped, retyped or out of range; safetensors headers whose length prefix,
offsets, dtypes or shapes lie; sharded folders whose index points anywhere; GGUF files decoded into
an editable image whose counts, lengths, types or offsets lie; bytes flipped, cut and spliced."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

if TYPE_CHECKING:
    from fuzz_cases import HFSeed, Seeds

# -- values -------------------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 3, 6, 46, 62, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
                    2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 10**30]
INTERESTING_STRINGS = ["", "gemma", "gemma2", "gemma3_text", "gemma4_text", "gemma3", "gemma4", "llama",
                       "sliding_attention", "full_attention", "default", "linear", "proportional", "yarn",
                       "gelu_pytorch_tanh", "vision", "F32", "BF16", "\u00b2", "\u0663", "0" * 4400 + "1",
                       "../../etc/passwd", "/etc/passwd", "model.safetensors", "\x00", "\ud800", "<unk>"]
CONFIG_FIELDS = ["num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "vocab_size", "intermediate_size", "sliding_window", "layer_types", "rope_parameters",
                 "rope_scaling", "rope_theta", "per_layer_config", "num_kv_shared_layers", "global_head_dim",
                 "num_global_key_value_heads", "attention_k_eq_v", "enable_moe_block", "num_experts",
                 "top_k_experts", "moe_intermediate_size", "hidden_size_per_layer_input", "text_config",
                 "vision_config", "bos_token_id", "eos_token_id", "pad_token_id", "query_pre_attn_scalar",
                 "sliding_window_pattern", "final_logit_softcapping", "my_new_field"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(INTERESTING_INTS), st.integers(-1000, 1000),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(INTERESTING_STRINGS), st.text(max_size=8))
json_keys = st.one_of(st.sampled_from(CONFIG_FIELDS + INTERESTING_STRINGS), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(json_keys, inner, max_size=3)), max_leaves=8)


def _mutate_json(draw, tree: Any) -> Any:
    """One edit somewhere in a JSON tree (returned, maybe replaced): a value dropped, replaced by
    any JSON value, retyped, or a field added."""
    if not isinstance(tree, (dict, list)) or not tree or draw(st.integers(0, 3)) == 0:
        if isinstance(tree, dict) and draw(st.booleans()):
            tree[draw(json_keys)] = draw(json_values)  # an unknown (or known) field added
            return tree
        return draw(json_values)
    keys = list(tree) if isinstance(tree, dict) else list(range(len(tree)))
    key = keys[draw(st.integers(0, len(keys) - 1))]
    action = draw(st.sampled_from(["descend", "descend", "drop", "retype"]))
    if action == "drop":
        del tree[key]
    elif action == "retype":
        value = tree[key]
        tree[key] = draw(st.sampled_from([str(value), [value], {"value": value}, float(value)
                                          if isinstance(value, int) and abs(value) < 2**60 else None, True]))
    else:
        tree[key] = _mutate_json(draw, tree[key])
    return tree


_RAW = "\u0000raw\u0000"


def _raw_json(draw, tree: dict) -> str:
    """JSON text with a value only a file can hold under some field: a number past Python's digit
    limit or beyond 64 bits, nesting past the recursion limit, NaN, a lone surrogate."""
    tree[draw(st.one_of(st.sampled_from(sorted(tree)), json_keys) if tree else json_keys)] = _RAW
    snippet = draw(st.sampled_from(["1" * 5000, "-" + "9" * 30, "18446744073709551616", "[" * 100_000 + "]" * 100_000,
                                    "NaN", "-Infinity", "1e999", "\"\\ud800\"", "\"\\u0000\""]))
    return json.dumps(tree, allow_nan=True).replace(json.dumps(_RAW), snippet)


# -- config.json ----------------------------------------------------------------------------------

def multimodal_wrapper(text_config: dict, model_type: str) -> dict:
    """A multimodal checkpoint's config around a text decoder's (nested text_config)."""
    return {"model_type": model_type, "text_config": text_config, "vision_config": {"hidden_size": 16},
            "image_token_index": 380, "boi_token_index": 378, "eoi_token_index": 379}


@st.composite
def config_files(draw, seeds: Seeds) -> tuple[HFSeed, bytes]:
    """(the seed whose weights go with it, config.json bytes)."""
    seed = draw(st.sampled_from(seeds.hf))
    config = copy.deepcopy(seed.config)
    if draw(st.integers(0, 4)) == 0:
        config = multimodal_wrapper(config, draw(st.sampled_from(["gemma3", "gemma4"])))
    for _ in range(draw(st.integers(1, 4))):
        config = _mutate_json(draw, config)
    form = draw(st.sampled_from(["json"] * 6 + ["raw", "truncated", "bytes"]))
    text = _raw_json(draw, config) if form == "raw" and isinstance(config, dict) else json.dumps(config, allow_nan=True)
    data = text.encode("utf-8", "surrogatepass")
    if form == "truncated":
        data = data[:draw(st.integers(0, len(data)))]
    elif form == "bytes":
        data = draw(byte_mutations(data))
    return seed, data


# -- safetensors ----------------------------------------------------------------------------------

ST_DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "", "f32", None, 5, ["F32"], {"F32": 1}]
ST_DIMS = [0, 1, -1, 48, 2**31, 2**32, 2**40, 2**62, 2**63, 2**64]


def _offsets(draw, entry: dict, header: dict, data_len: int) -> Any:
    """Lying data_offsets for an entry of the seed's header."""
    begin, end = entry["data_offsets"]
    other = draw(st.sampled_from([e["data_offsets"] for e in header.values() if "data_offsets" in e]))
    return draw(st.sampled_from([
        [end, begin], [begin - 1, end - 1], [-8, end - begin - 8], [begin, data_len + 4], [data_len, data_len + end - begin],
        list(other), [other[0] + 4, other[0] + 4 + end - begin], [begin, end, end], [begin], [float(begin), float(end)],
        [str(begin), str(end)], [begin, 2**64], None, [True, end]]))


def _shape(draw, entry: dict) -> Any:
    """A lying shape for an entry of the seed's header."""
    shape = list(entry["shape"])
    choice = draw(st.sampled_from(["dim", "extra", "drop", "type", "wrap"]))
    if choice == "dim" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from(ST_DIMS))
    elif choice == "extra":
        shape.append(draw(st.sampled_from(ST_DIMS)))
    elif choice == "drop" and shape:
        shape.pop()
    elif choice == "type":
        return draw(st.sampled_from(["48", [48.0, 48], [True], {"0": 48}, None, [[48]]]))
    elif choice == "wrap":  # a product that wraps to 0 in int64
        return [2**32, 2**32]
    return shape


@st.composite
def safetensors_files(draw, seeds: Seeds) -> tuple[HFSeed, bytes]:
    """(the seed whose config goes with it, model.safetensors bytes)."""
    seed = draw(st.sampled_from(seeds.hf))
    header = copy.deepcopy(seed.header)
    form = draw(st.sampled_from(["entries", "entries", "entries", "json", "prefix", "garbage"]))
    names = [n for n in header if n != "__metadata__"]
    if form == "entries":
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(names))
            what = draw(st.sampled_from(["offsets", "offsets", "dtype", "shape", "shape", "missing", "delete",
                                         "duplicate", "metadata", "not an object"]))
            entry = header.get(name)
            if not isinstance(entry, dict):  # deleted or replaced by an earlier edit
                continue
            if what == "offsets":
                entry["data_offsets"] = _offsets(draw, seed.header[name], seed.header, len(seed.data))
            elif what == "dtype":
                entry["dtype"] = draw(st.sampled_from(ST_DTYPES))
            elif what == "shape":
                entry["shape"] = _shape(draw, seed.header[name])
            elif what == "missing":
                entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
            elif what == "delete":
                del header[name]
            elif what == "duplicate":
                header[draw(st.sampled_from(names + ["model.layers.99.mlp.up_proj.weight", ""]))] = dict(entry)
            elif what == "metadata":
                header["__metadata__"] = draw(json_values)
            else:
                header[name] = draw(json_values)
    elif form == "json":
        header = _mutate_json(draw, header)
    text = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
    if form == "garbage":
        text = draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"[]", b"1", b"null", b'"x"', b"{",
                                                                         b"[" * 100_000, b"1" * 5000])))
    length = len(text)
    if form == "prefix":
        length = draw(st.sampled_from([0, 1, length - 1, length + 1, length + len(seed.data), 2**31, 2**63,
                                       2**64 - 1]))
    return seed, struct.pack("<Q", length % 2**64) + text + seed.data


SHARD_NAMES = ["../outside.safetensors", "/etc/passwd", "sub/shard.safetensors", "..", "", ".", "config.json",
               "shard\x00.safetensors", "model.safetensors", "sub\\shard.safetensors", 5, None, ["x"], {"x": 1}]


@st.composite
def sharded_folders(draw, seeds: Seeds) -> tuple[HFSeed, dict[str, bytes]]:
    """(seed, files) of a two-shard folder whose model.safetensors.index.json may name files
    outside the folder, or not name files at all."""
    seed = draw(st.sampled_from(seeds.hf))
    names = sorted(n for n in seed.header if n != "__metadata__")
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    files: dict[str, bytes] = {"config.json": json.dumps(seed.config).encode()}
    weight_map = {}
    for shard, members in shards.items():
        header, chunks, at = {}, [], 0
        for n in members:
            begin, end = seed.header[n]["data_offsets"]
            header[n] = {**seed.header[n], "data_offsets": [at, at + end - begin]}
            chunks.append(seed.data[begin:end])
            at += end - begin
        text = json.dumps(header).encode()
        files[shard] = struct.pack("<Q", len(text)) + text + b"".join(chunks)
        weight_map.update(dict.fromkeys(members, shard))
    for _ in range(draw(st.integers(0, 2))):
        weight_map[draw(st.sampled_from(names))] = draw(st.sampled_from(SHARD_NAMES))
    index: Any = {"metadata": {"total_size": len(seed.data)}, "weight_map": weight_map}
    if draw(st.integers(0, 4)) == 0:
        index = _mutate_json(draw, index)
    files["model.safetensors.index.json"] = json.dumps(index, allow_nan=True).encode("utf-8", "surrogatepass")
    return seed, files


# -- GGUF -----------------------------------------------------------------------------------------

# GGUF value types (gguf.GGUFValueType) and their little-endian layouts.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FORMATS = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f",
                  BOOL: "B", UINT64: "Q", INT64: "q", FLOAT64: "d"}


@dataclasses.dataclass
class GGUFImage:
    """A GGUF file as editable parts: metadata (key, value type, value; an array's value is
    (item type, items)), tensor infos [name, dims (GGUF order), type, offset] and the data."""

    version: int
    kvs: list[list]
    tensors: list[list]
    data: bytes
    alignment: int = 32

    @classmethod
    def read(cls, path: Path) -> "GGUFImage":
        """A valid file (written by the test helpers) read with the gguf package."""
        import gguf

        reader = gguf.GGUFReader(path)
        kvs = []
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            kind = int(field.types[0])
            if kind == ARRAY:
                value = (int(field.parts[3][0]), [v.encode() if isinstance(v, str) else v for v in field.contents()])
            else:
                value = field.contents()
                value = value.encode() if isinstance(value, str) else value
            kvs.append([key.encode(), kind, value])
        tensors = [[t.name.encode(), [int(d) for d in t.shape], int(t.tensor_type), t.data_offset - reader.data_offset]
                   for t in reader.tensors]
        version = int(reader.fields["GGUF.version"].contents())
        return cls(version, kvs, tensors, bytes(reader.data[reader.data_offset:]), int(reader.alignment))

    def encode(self) -> tuple[bytes, list[tuple[int, int, str]]]:
        """(the file, its count and type fields as (offset, width, kind)) for lies patched in later."""
        out = bytearray(b"GGUF")
        fields: list[tuple[int, int, str]] = []

        def put(fmt: str, value: Any, kind: str | None = None) -> None:
            size = struct.calcsize("<" + fmt)
            if kind:
                fields.append((len(out), size, kind))
            if fmt in "fd":
                try:
                    out.extend(struct.pack("<" + fmt, value))
                except OverflowError:  # beyond float32: what a float32 field can hold
                    out.extend(struct.pack("<f", math.copysign(math.inf, value)))
            else:
                out.extend((int(value) % 2 ** (8 * size)).to_bytes(size, "little"))

        def put_string(s: bytes, kind: str) -> None:
            put("Q", len(s), kind)
            out.extend(s)

        def put_value(kind: int, value: Any) -> None:
            if kind == STRING:
                put_string(value, "string length")
            elif kind == ARRAY:
                item_kind, items = value
                put("I", item_kind, "array item type")
                put("Q", len(items), "array length")
                for item in items:
                    put_value(item_kind, item)
            else:
                put(SCALAR_FORMATS.get(kind, "B"), value)

        put("I", self.version, "version")
        put("Q", len(self.tensors), "tensor count")
        put("Q", len(self.kvs), "kv count")
        for key, kind, value in self.kvs:
            put_string(key, "key length")
            put("I", kind, "value type")
            put_value(kind, value)
        for name, dims, kind, offset in self.tensors:
            put_string(name, "tensor name length")
            put("I", len(dims), "tensor dims count")
            for d in dims:
                put("Q", d, "tensor dim")
            put("I", kind, "tensor type")
            put("Q", offset, "tensor offset")
        out.extend(b"\0" * (-len(out) % self.alignment))
        out.extend(self.data)
        return bytes(out), fields


_INTS = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-3, 300))
_GGUF_STRINGS = st.one_of(st.sampled_from([s.encode("utf-8", "surrogatepass") for s in INTERESTING_STRINGS]),
                          st.binary(max_size=12))
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)


def gguf_scalar(kind: int) -> st.SearchStrategy:
    """A value of a scalar GGUF type (integers wrap to the type's width when encoded)."""
    return _GGUF_STRINGS if kind == STRING else _FLOATS if kind in (FLOAT32, FLOAT64) else _INTS


def gguf_values() -> st.SearchStrategy:
    """(value type, value) of a GGUF metadata entry, valid for its type but maybe not for its key."""
    scalars = st.sampled_from(sorted(SCALAR_FORMATS) + [STRING]).flatmap(
        lambda kind: st.tuples(st.just(kind), gguf_scalar(kind)))
    arrays = st.sampled_from([UINT32, INT32, BOOL, UINT8, FLOAT32, STRING]).flatmap(
        lambda kind: st.tuples(st.just(ARRAY), st.tuples(st.just(kind), st.lists(gguf_scalar(kind), max_size=8))))
    nested = st.tuples(st.just(ARRAY), st.tuples(st.just(ARRAY), st.lists(
        st.tuples(st.just(UINT8), st.lists(_INTS, max_size=2)), max_size=2)))
    return st.one_of(scalars, arrays, nested)


GGUF_KEYS = ["general.alignment", "split.count", "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.precompiled_charsmap",
             "{arch}.block_count", "{arch}.attention.head_count", "{arch}.attention.key_length",
             "{arch}.attention.sliding_window_pattern", "{arch}.rope.scaling.factor", "{arch}.rope.scaling.type",
             "{arch}.attn_logit_softcapping", "{arch}.expert_count", "{arch}.vocab_size", "{arch}.context_length",
             "{arch}.attention.head_count_kv", "{arch}.feed_forward_length", "{arch}.attention.shared_kv_layers"]
GGML_TYPES = list(range(0, 42)) + [2**31, 2**32 - 1]
TENSOR_DIMS = [0, 1, 31, 32, 256, 2**20, 2**31, 2**32, 2**40, 2**63, 2**64 - 1]


def _edit_metadata(draw, image: GGUFImage, arch: str) -> None:
    action = draw(st.sampled_from(["value", "value", "drop", "add", "duplicate"]))
    i = draw(st.integers(0, len(image.kvs) - 1))
    if action == "value":
        kind, value = image.kvs[i][1:]
        if kind == ARRAY or draw(st.booleans()):
            image.kvs[i][1:] = draw(gguf_values())
        else:  # the same type, another value (a count of 0, 2^32, a negative one...)
            image.kvs[i][2] = draw(gguf_scalar(kind))
    elif action == "drop":
        del image.kvs[i]
    elif action == "add":
        key = draw(st.one_of(st.sampled_from(GGUF_KEYS), st.text(max_size=10))).replace("{arch}", arch)
        image.kvs.insert(i, [key.encode("utf-8", "surrogatepass"), *draw(gguf_values())])
    else:
        image.kvs.insert(i, list(image.kvs[i]))


def _edit_tokenizer(draw, image: GGUFImage, arch: str) -> None:
    arrays = [kv for kv in image.kvs if kv[0].startswith(b"tokenizer.ggml.") and kv[1] == ARRAY and kv[2][0] != ARRAY]
    if not arrays:
        return
    kv = draw(st.sampled_from(arrays))
    item_kind, items = kv[2]
    items = list(items)
    action = draw(st.sampled_from(["truncate", "extend", "item", "item", "retype"]))
    if action == "truncate":
        items = items[:draw(st.integers(0, len(items)))]
    elif action == "extend":
        items += items[:draw(st.integers(1, 5))]
    elif action == "item" and items:
        at = draw(st.integers(0, len(items) - 1))
        items[at] = (draw(st.sampled_from([b"", b"\xff\xfe", b"<unk>", b"<bos>", items[0], b"a" * 70_000]))
                     if item_kind == STRING else draw(st.sampled_from([-1, 2, 5, 7, 99, 2**31 - 1]))
                     if item_kind in (INT32, UINT32) else draw(st.floats(allow_nan=True, allow_infinity=True)))
    elif action == "retype":
        item_kind = draw(st.sampled_from([t for t in (STRING, FLOAT32, INT32, UINT8) if t != item_kind]))
        items = [b"x%d" % i for i in range(len(items))] if item_kind == STRING else [1] * len(items)
    kv[2] = (item_kind, items)


def _edit_tensor(draw, image: GGUFImage, arch: str) -> None:
    i = draw(st.integers(0, len(image.tensors) - 1))
    tensor = image.tensors[i]
    action = draw(st.sampled_from(["dim", "dims", "type", "type", "offset", "offset", "name", "drop", "duplicate"]))
    if action == "dim" and tensor[1]:
        tensor[1][draw(st.integers(0, len(tensor[1]) - 1))] = draw(st.sampled_from(TENSOR_DIMS))
    elif action == "dims":
        tensor[1] = draw(st.lists(st.sampled_from(TENSOR_DIMS), max_size=6))
    elif action == "type":
        tensor[2] = draw(st.sampled_from(GGML_TYPES))
    elif action == "offset":
        other = image.tensors[draw(st.integers(0, len(image.tensors) - 1))][3]
        tensor[3] = draw(st.sampled_from([other, other + 1, len(image.data), len(image.data) - 32, 2**40, 2**64 - 1]))
    elif action == "name":
        tensor[0] = draw(st.sampled_from([b"blk.0.foo.weight", b"\xff.weight", b"", image.tensors[0][0],
                                          b"blk.99999999999999999999.attn_q.weight", b"blk.\xd9\xa3.attn_q.weight",
                                          b"output.weight", b"rope_freqs.weight"]))
    elif action == "drop":
        del image.tensors[i]
    else:
        image.tensors.insert(i, [tensor[0] + b"x", list(tensor[1]), tensor[2], tensor[3]])


GGUF_EDITS = (_edit_metadata, _edit_tokenizer, _edit_tensor)


@st.composite
def gguf_files(draw, seeds: Seeds) -> bytes:
    """A GGUF file edited (metadata values, tokenizer arrays, tensor infos) and then made to lie:
    a count, length, type or offset field overwritten after encoding."""
    seed = draw(st.sampled_from(seeds.gguf))
    image = copy.deepcopy(seed.image)
    for _ in range(draw(st.integers(0, 3))):
        edit = draw(st.sampled_from(GGUF_EDITS))
        if image.kvs and image.tensors:
            edit(draw, image, seed.name)
    if draw(st.integers(0, 9)) == 0:
        image.version = draw(st.sampled_from([0, 1, 2, 4, 3 << 16, 2**32 - 1]))
    data, fields = image.encode()
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 2))):
        kinds = sorted({kind for _, _, kind in fields})
        kind = draw(st.sampled_from(kinds))
        offset, width, _ = draw(st.sampled_from([f for f in fields if f[2] == kind]))
        current = int.from_bytes(data[offset:offset + width], "little")
        lie = draw(st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(max(current - 2, 0), current + 2)))
        data[offset:offset + width] = (lie % 2 ** (8 * width)).to_bytes(width, "little")
    if draw(st.integers(0, 9)) == 0:
        data[:4] = draw(st.sampled_from([b"GGML", b"FUGG", b"\0\0\0\0"]))
    return bytes(data)


# -- bytes --------------------------------------------------------------------------------------

@st.composite
def byte_mutations(draw, data: bytes, hot: int | None = None) -> bytes:
    """Bits flipped, bytes set, cut, spliced, inserted or deleted; most of them within the first
    `hot` bytes (the header) where given."""
    out = bytearray(data)

    def position(extra: int = 0) -> int:
        limit = len(out) + extra
        if hot and draw(st.integers(0, 4)) and limit:
            return draw(st.integers(0, min(hot, limit) - 1))
        return draw(st.integers(0, max(limit - 1, 0)))

    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "flip", "set", "truncate", "splice", "insert", "delete"]))
        if not out:
            break
        if action == "flip":
            at = position()
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            at = position()
            out[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif action == "truncate":
            del out[position():]
        elif action == "splice":  # a range copied over another place
            start, length, to = position(), draw(st.integers(1, 64)), position()
            chunk = out[start:start + length]
            out[to:to + len(chunk)] = chunk
        elif action == "insert":
            at = position(1)
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            at = position()
            del out[at:at + draw(st.integers(1, 16))]
    return bytes(out)


@st.composite
def mutated_checkpoints(draw, seeds: Seeds) -> tuple[str, Any, bytes]:
    """(kind, seed, bytes): a real small file with its bytes mutated; kind is "gguf",
    "safetensors" or "config.json" (the file of an HF seed)."""
    kind = draw(st.sampled_from(["gguf", "gguf", "safetensors", "config.json"]))
    if kind == "gguf":
        seed = draw(st.sampled_from(seeds.gguf))
        data = seed.path.read_bytes()
        hot = len(seed.image.encode()[0]) - len(seed.image.data)
    else:
        seed = draw(st.sampled_from(seeds.hf))
        data = (seed.folder / ("model.safetensors" if kind == "safetensors" else "config.json")).read_bytes()
        hot = 8 + struct.unpack("<Q", data[:8])[0] if kind == "safetensors" else None
    return kind, seed, draw(byte_mutations(data, hot))
