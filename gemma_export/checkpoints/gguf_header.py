"""A GGUF file's header checked against the file before the gguf package parses it.

gguf.GGUFReader trusts the header: it loops over a claimed count even where the file ends first (a
uint8 array claiming 2^40 items never finishes), and it builds views of claimed tensor shapes. This
walk reads every count, length, type and shape with plain struct reads and refuses the file where
one claims more than the bytes that follow, so that the reader only ever sees a header that fits.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

import gguf

from gemma_export.errors import CheckpointError

_V = gguf.GGUFValueType
_SCALAR_SIZES = {_V.UINT8: 1, _V.INT8: 1, _V.UINT16: 2, _V.INT16: 2, _V.UINT32: 4, _V.INT32: 4, _V.FLOAT32: 4,
                 _V.BOOL: 1, _V.UINT64: 8, _V.INT64: 8, _V.FLOAT64: 8}
_MIN_SIZES = {**_SCALAR_SIZES, _V.STRING: 8, _V.ARRAY: 12}  # the least bytes an item of each type takes
_TYPES = {int(t): t for t in gguf.GGML_QUANT_SIZES}
_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 4  # arrays of arrays; llama.cpp writes none
# The gguf reader keeps a numpy view per array item (about 350 bytes each). Gemma 3's vocabulary
# (tokens, scores, types) is 786k items; this bound keeps a file from costing gigabytes.
MAX_ARRAY_ITEMS = 1 << 22


def check_header(path: Path) -> None:
    """Raises CheckpointError unless every count, length, type and tensor extent in the header of
    the GGUF file at `path` fits the file."""
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise CheckpointError(f"{path}: not a valid GGUF file, corrupt or truncated ({size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _Walk(buf, str(path)).header()


class _Walk:
    def __init__(self, buf: mmap.mmap, where: str):
        self.buf, self.where, self.at = buf, where, 0
        self.array_items = 0

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: not a valid GGUF file, corrupt or truncated ({what})")

    def take(self, n: int, what: str) -> int:
        """Offset of the next n bytes, which must be in the file."""
        left = len(self.buf) - self.at
        if n > left:
            raise self.fail(f"{what} needs {n} bytes at offset {self.at}, the file has {left} left")
        start, self.at = self.at, self.at + n
        return start

    def number(self, fmt: str, what: str) -> int:
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def text(self, what: str) -> str:
        """A string the reader decodes as it parses (a key, a tensor name): it must be UTF-8."""
        n = self.number("<Q", f"the length of {what}")
        start = self.take(n, what)
        try:
            return self.buf[start:start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at offset {start} is not UTF-8") from None

    def skip_strings(self, n: int, what: str) -> None:
        """n string values (decoded, and checked, only when read): their lengths must fit the file."""
        buf, at, end = self.buf, self.at, len(self.buf)
        for _ in range(n):  # a vocabulary is 262k strings: the plain loop, not take() per string
            if end - at < 8 or (length := struct.unpack_from("<Q", buf, at)[0]) > end - at - 8:
                raise self.fail(f"a string of {what} runs past the end of the file")
            at += 8 + length
        self.at = at

    def header(self) -> None:
        if self.buf[:4] != b"GGUF":
            raise self.fail(f"magic {bytes(self.buf[:4])!r}, not b'GGUF'")
        self.at = 4
        version = self.number("<I", "the version")
        if version and version & 0xFFFF == 0:
            raise CheckpointError(f"{self.where}: a GGUF file of the other byte order is not supported")
        if version not in _VERSIONS:
            raise CheckpointError(f"{self.where}: GGUF version {version} is not supported (versions 2, 3)")
        tensors = self.number("<Q", "the tensor count")
        entries = self.number("<Q", "the metadata count")
        # Each entry and tensor info takes some bytes: a count the rest of the file cannot hold is a lie.
        least = entries * (8 + 4 + 1) + tensors * (8 + 4 + 8 + 4 + 8)
        if least > len(self.buf) - self.at:
            raise self.fail(f"{entries} metadata entries and {tensors} tensors claimed; the file's "
                            f"{len(self.buf)} bytes cannot hold them")
        alignment = self.metadata(entries)
        extents = self.tensor_infos(tensors)
        data_start = self.at + (-self.at % alignment)
        for name, (offset, nbytes, kind, dims) in extents.items():
            end = data_start + offset + nbytes
            if end > len(self.buf):
                raise CheckpointError(
                    f"{self.where}: tensor {name!r} ({kind.name}, {dims}) ends at byte {end}, past the end of "
                    f"the file ({len(self.buf)} bytes): truncated")

    def metadata(self, entries: int) -> int:
        """Walks the metadata; returns the data alignment."""
        keys: set[str] = set()
        alignment = gguf.GGUF_DEFAULT_ALIGNMENT
        for _ in range(entries):
            key = self.text("a metadata key")
            if key in keys:
                raise self.fail(f"metadata key {key!r} appears twice")
            keys.add(key)
            kind = self.number("<I", f"the type of metadata {key!r}")
            start = self.at
            self.value(kind, key, 0)
            if key == "general.alignment":
                value = struct.unpack_from("<I", self.buf, start)[0] if kind == _V.UINT32 else 0
                if value <= 0 or value & (value - 1):
                    raise self.fail("general.alignment is not a power of two stored as uint32")
                alignment = value
        return alignment

    def value(self, kind: int, key: str, depth: int) -> None:
        if kind in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[kind], f"metadata {key!r}")
        elif kind == _V.STRING:
            self.skip_strings(1, f"metadata {key!r}")
        elif kind == _V.ARRAY:
            if depth == _MAX_NESTING:
                raise self.fail(f"metadata {key!r} nests arrays deeper than {_MAX_NESTING}")
            item = self.number("<I", f"the item type of metadata {key!r}")
            n = self.number("<Q", f"the length of metadata {key!r}")
            if item not in _MIN_SIZES:
                raise self.fail(f"metadata {key!r} is an array of unknown type {item}")
            if n * _MIN_SIZES[item] > len(self.buf) - self.at:
                raise self.fail(f"metadata {key!r} claims {n} items, past the end of the file")
            self.array_items += n
            if self.array_items > MAX_ARRAY_ITEMS:
                raise self.fail(f"metadata arrays hold more than {MAX_ARRAY_ITEMS} items, more than any Gemma "
                                "vocabulary")
            if item in _SCALAR_SIZES:
                self.take(n * _SCALAR_SIZES[item], f"metadata {key!r}")
            elif item == _V.STRING:
                self.skip_strings(n, f"metadata {key!r}")
            else:
                for _ in range(n):
                    self.value(item, key, depth + 1)
        else:
            raise self.fail(f"metadata {key!r} has unknown type {kind}")

    def tensor_infos(self, count: int) -> dict[str, tuple[int, int, gguf.GGMLQuantizationType, list[int]]]:
        """name -> (offset in the data, bytes, type, dims) of each tensor info."""
        extents = {}
        for _ in range(count):
            name = self.text("a tensor name")
            if name in extents:
                raise self.fail(f"tensor {name!r} appears twice")
            n_dims = self.number("<I", f"the dimension count of tensor {name!r}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise self.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS})")
            dims = [self.number("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims)]
            raw_kind = self.number("<I", f"the type of tensor {name!r}")
            offset = self.number("<Q", f"the offset of tensor {name!r}")
            kind = _TYPES.get(raw_kind)
            if kind is None:
                raise self.fail(f"tensor {name!r} has unknown type {raw_kind}")
            block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
            if dims[0] % block:
                raise self.fail(f"tensor {name!r} has rows of {dims[0]} values, not whole {kind.name} blocks of {block}")
            extents[name] = (offset, math.prod(dims) // block * block_bytes, kind, dims)
        return extents
