"""onnxruntime with the in-place KV cache (targets `onnx`, `ort-cpu`, `ort-cuda`; manifest
kv_cache.update "inplace"). The graph's interface is interface.py's in-place one.

reserve(rows) allocates each cache buffer of the manifest once, zeroed (entries beyond the valid
lengths are read by some kernels, masked by addition, so they must be finite): numpy arrays on the
CPU (bf16 stored as uint16), onnxruntime OrtValues in GPU memory on CUDA. A call over some rows
binds those rows by address (their first element and shape), so it costs only those rows on every
device and dtype (row views), and each buffer is bound as both past_{name} and present_{name}: the
graph updates it in place and nothing is copied between steps.

A call that continues several rows' caches by more than one token each runs one row at a time:
GroupQueryAttention without per-row query lengths (its 17th input, which onnxruntime before 1.32
does not accept) refuses it ("batch_size must be 1 when sequence_length > 1 and past context is
given"), and row views make the split cost only the rows' own work. A first prompt (every row at
past 0) runs batched, right-padded, as the kernel expects, no wider than its longest row.

Window-sized rings (the onnx target's sliding layers): before each call the ring slots it will
write are copied per row, so that rewind(row, length) can put back those a rejected draft
overwrote (the call's positions >= length); such rings are numpy arrays (the onnx target runs on
the CPU).

A step's int64 inputs and its logits are numpy arrays bound once per batch shape (first_row, rows,
width, keep): the OrtValues share their memory, so a step writes the arrays and runs. The bindings
of the last few shapes are kept; reserve() drops them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from gemma_runtime.backends.ort_session import create_session
from gemma_runtime.backends import cuda_driver
from gemma_runtime.backends.protocol import (Capabilities, MediaInputs, check_copy, check_length, check_reserve,
                                             check_rows, step_arrays)
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import LOGITS, CacheTensor, Splice, inplace_feeds
from gemma_runtime.manifest import Manifest

# a cache buffer's dtype -> (numpy type of its storage, ONNX element type); bf16 has no numpy type:
# uint16 storage, bound as bfloat16.
_CACHE_TYPES = {"fp32": (np.float32, 1), "fp16": (np.float16, 10), "bf16": (np.uint16, 16)}
KEPT_BINDINGS = 16


class OrtInplaceBackend:
    def __init__(self, folder: Path, manifest: Manifest, threads: int | None, device: str = "cpu"):
        kv = manifest.kv_cache
        self.session = create_session(folder / manifest.decoder.file, threads, device)
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.max_seq_len = kv.max_seq_len
        self.pad_id = manifest.tokens.pad
        self.buffers = kv.buffers
        self.vocab_size = manifest.config["vocab_size"]
        self.media = MediaInputs(manifest)
        self.capabilities = Capabilities(keeps_rows=True, row_views=True, devices=(self.device,), max_batch=None)
        self.cache: list[np.ndarray] | list[ort.OrtValue] = []  # one per buffer, [reserved, ...]
        self.reserved = 0
        self.rings = [(i, b.shape[2]) for i, b in enumerate(self.buffers) if b.layout == "ring"]  # (buffer, window)
        self._written: dict[int, _Written] = {}  # row -> what its last call overwrote in the rings
        self._bindings: collections.OrderedDict[tuple[int, ...], _Binding] = collections.OrderedDict()

    def reserve(self, rows: int) -> None:
        check_reserve(rows, None)
        if rows == self.reserved:
            return
        self._bindings.clear()
        self._written.clear()
        self.cache = [self._zeroed((rows, *b.shape[1:]), b.dtype) for b in self.buffers]
        self.reserved = rows

    def step(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray | None = None,
             first_row: int = 0, spliced: Sequence[Splice | None] | None = None) -> np.ndarray:
        ids, past, seq, keep = step_arrays(ids, past, seq, keep)
        rows, width = ids.shape
        check_rows(first_row, rows, self.reserved)
        check_length(past, width, self.max_seq_len)
        if rows > 1 and width > 1 and past.any():
            return np.concatenate([
                self.step(ids[b:b + 1, :seq[b]], past[b:b + 1], seq[b:b + 1], np.minimum(keep[b:b + 1], seq[b] - 1),
                          first_row + b, None if spliced is None else [spliced[b]])
                for b in range(rows)])
        longest = int(seq.max())
        if longest < width:
            ids, keep = ids[:, :longest], np.minimum(keep, longest - 1)
            width = longest
        media = self.media.feeds(spliced, rows, width)
        if self.rings:
            self._remember(first_row, past + seq, width)
        binding = self._binding(first_row, rows, width, keep.shape[1])
        for name, array in inplace_feeds(ids, past, seq, keep).items():
            binding.arrays[name][...] = array
        for name, array in media.items():  # their shape varies with the splices: bound per call
            binding.io.bind_cpu_input(name, array)
        self.session.run_with_iobinding(binding.io)
        return binding.logits.copy()  # the array is the next call's output

    def copy_row(self, source: int, target: int) -> None:
        check_copy(source, target, self.reserved)
        if self.device == "cpu":
            for storage in self.cache:
                storage[target] = storage[source]
            return
        cuda_driver.use_primary_context()  # onnxruntime's, the thread's current one after its first run
        for buffer, storage in zip(self.buffers, self.cache):
            row_bytes = self._row_bytes(buffer)
            cuda_driver.copy_device(storage.data_ptr() + target * row_bytes, storage.data_ptr() + source * row_bytes,
                                    row_bytes)

    def rewind(self, row: int, length: int) -> None:
        if not self.rings:
            return  # full-length caches: the next call overwrites what the last one wrote beyond length
        written = self._written.get(row)
        if written is None or not 0 <= length <= written.end:
            raise RuntimeInputError(f"row {row}: no call to rewind to {length}")
        for (i, window), positions, saved in zip(self.rings, written.positions, written.saved):
            if len(positions) and length < positions[0]:
                raise RuntimeInputError(f"row {row}: the last call wrote more than a ring of {window} holds; it "
                                        f"cannot be rewound to {length}")
            undo = positions >= length
            self.cache[i][row][:, positions[undo] % window] = saved[:, undo]
        self._written[row] = _Written(length, [p[p < length] for p in written.positions],
                                      [s[:, p < length] for p, s in zip(written.positions, written.saved)])

    def _remember(self, first_row: int, ends: np.ndarray, width: int) -> None:
        """Before a call: each row's ring slots it writes (the positions before its end, as many as
        the call's width, at most the window), and their contents."""
        if self.device != "cpu":
            raise RuntimeInputError("window-sized ring caches run on the CPU only")
        positions, saved = [], []
        for i, window in self.rings:
            count = min(width, window)
            at = ends[:, None] - count + np.arange(count)  # [rows, count]
            rows = self.cache[i][first_row:first_row + len(ends)]
            positions.append(at)
            saved.append(np.take_along_axis(rows, (at % window)[:, None, :, None], axis=2))
        for b in range(len(ends)):
            self._written[first_row + b] = _Written(int(ends[b]), [p[b] for p in positions], [s[b] for s in saved])

    def _binding(self, first_row: int, rows: int, width: int, keep: int) -> _Binding:
        key = (first_row, rows, width, keep)
        binding = self._bindings.get(key)
        if binding is None:
            views = [self._rows(buffer, storage, first_row, rows) for buffer, storage in zip(self.buffers, self.cache)]
            binding = _Binding(self.session, self.buffers, views, rows, width, keep, self.vocab_size)
            self._bindings[key] = binding
            if len(self._bindings) > KEPT_BINDINGS:
                self._bindings.popitem(last=False)
        self._bindings.move_to_end(key)
        return binding

    def _rows(self, buffer: CacheTensor, storage: np.ndarray | ort.OrtValue, first_row: int, rows: int) -> _RowView:
        """Rows [first_row, first_row + rows) of a cache buffer, by address."""
        address = storage.ctypes.data if isinstance(storage, np.ndarray) else storage.data_ptr()
        return _RowView(self.device, _CACHE_TYPES[buffer.dtype][1], [rows, *buffer.shape[1:]],
                        address + first_row * self._row_bytes(buffer))

    @staticmethod
    def _row_bytes(buffer: CacheTensor) -> int:
        return math.prod(buffer.shape[1:]) * np.dtype(_CACHE_TYPES[buffer.dtype][0]).itemsize

    def _zeroed(self, shape: tuple[int, ...], dtype: str) -> np.ndarray | ort.OrtValue:
        numpy_type, element_type = _CACHE_TYPES[dtype]
        if self.device == "cpu":
            return np.zeros(shape, numpy_type)
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), element_type, self.device, 0)
        value.update_inplace(np.zeros(shape, numpy_type))
        return value


@dataclasses.dataclass(frozen=True)
class _Written:
    """What a row's last call wrote in the rings, per ring buffer: the positions (ascending) and the
    slots' contents before the call ([kv_heads, count, head_dim])."""

    end: int  # the position after the row's last fed token
    positions: list[np.ndarray]
    saved: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class _RowView:
    """Cache rows by address, as io_binding.bind_input/bind_output take them."""

    device: str
    element_type: int  # ONNX element type
    shape: list[int]
    address: int

    def bind(self, io: ort.IOBinding, input_name: str, output_name: str) -> None:
        io.bind_input(input_name, self.device, 0, self.element_type, self.shape, self.address)
        io.bind_output(output_name, self.device, 0, self.element_type, self.shape, self.address)


class _Binding:
    """One batch shape's inputs and logits as numpy arrays, bound once with the cache rows: OrtValues
    made from numpy arrays share their memory, so writing the arrays is all a call needs."""

    def __init__(self, session: ort.InferenceSession, buffers: Sequence[CacheTensor], cache: list[_RowView],
                 rows: int, width: int, keep: int, vocab_size: int):
        zeros = inplace_feeds(np.zeros((rows, width)), np.zeros(rows), np.ones(rows), np.zeros((rows, keep)))
        self.arrays = {name: array.copy() for name, array in zeros.items()}  # each its own memory
        self.logits = np.zeros((rows, keep, vocab_size), np.float32)
        self.io = session.io_binding()
        self._values = [ort.OrtValue.ortvalue_from_numpy(a) for a in (*self.arrays.values(), self.logits)]
        for buffer, view in zip(buffers, cache):
            view.bind(self.io, buffer.input_name, buffer.output_name)
        for name, value in zip(self.arrays, self._values):
            self.io.bind_ortvalue_input(name, value)
        self.io.bind_ortvalue_output(LOGITS, self._values[-1])

