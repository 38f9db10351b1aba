"""onnxruntime with the in-place KV cache (targets `onnx`, `ort-cpu`, `ort-cuda`; manifest
kv_cache.update "inplace"). The graph's interface is interface.py's in-place one.

reserve(rows) allocates each cache buffer of the manifest once, zeroed (entries beyond the valid
lengths are read by some kernels, masked by addition, so they must be finite). On the CPU with
fp32/fp16 caches the buffers are numpy arrays and a call over some rows binds OrtValues that view
those rows (row views: it costs only those rows); elsewhere (bf16, CUDA) they are OrtValues of every
reserved row and a call runs them all, idle rows padded. Each buffer is bound as both past_{name}
and present_{name}, so the graph updates it in place and nothing is copied between steps.

A step's int64 inputs and its logits are numpy arrays bound once per batch shape (first_row, rows,
width, keep): the OrtValues share their memory, so a step writes the arrays and runs. The bindings
of the last few shapes are kept; reserve() drops them.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from gemma_runtime.backends.ort_session import create_session
from gemma_runtime.backends.protocol import (Capabilities, MediaInputs, check_length, check_reserve, check_rows,
                                             pad_rows, pad_to, step_arrays)
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import LOGITS, SPLICED_COLUMNS, CacheTensor, Splice, inplace_feeds
from gemma_runtime.manifest import Manifest

# a cache buffer's dtype -> (numpy type of the zeros, ONNX element type). bf16 has no numpy type:
# its zeros are uint16 zeros copied into a bfloat16 OrtValue (GPU targets compute in bf16).
_CACHE_TYPES = {"fp32": (np.float32, 1), "fp16": (np.float16, 10), "bf16": (np.uint16, 16)}
_VIEW_DTYPES = ("fp32", "fp16")  # cache dtypes bound as numpy row views (bf16 has no numpy type)
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
        row_views = self.device == "cpu" and all(b.dtype in _VIEW_DTYPES for b in self.buffers)
        self.capabilities = Capabilities(keeps_rows=True, row_views=row_views, devices=(self.device,), max_batch=None)
        self.cache: list[np.ndarray] | list[ort.OrtValue] = []  # one per buffer, [reserved, ...]
        self.reserved = 0
        self._bindings: collections.OrderedDict[tuple[int, ...], _Binding] = collections.OrderedDict()

    def reserve(self, rows: int) -> None:
        check_reserve(rows, None)
        if rows == self.reserved:
            return
        self._bindings.clear()
        shapes = [(rows, *b.shape[1:]) for b in self.buffers]
        if self.capabilities.row_views:
            self.cache = [np.zeros(shape, _CACHE_TYPES[b.dtype][0]) for shape, b in zip(shapes, self.buffers)]
        else:
            self.cache = [self._zeroed(shape, b.dtype) for shape, b in zip(shapes, self.buffers)]
        self.reserved = rows

    def step(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray | None = None,
             first_row: int = 0, spliced: Sequence[Splice | None] | None = None) -> np.ndarray:
        ids, past, seq, keep = step_arrays(ids, past, seq, keep)
        rows, width = ids.shape
        check_rows(first_row, rows, self.reserved)
        check_length(past, width, self.max_seq_len)
        media = self.media.feeds(spliced, rows, width)
        if not self.capabilities.row_views:  # every reserved row, idle ones padded
            if first_row:
                raise RuntimeInputError("this backend runs every reserved row (no row views): first_row must be 0")
            ids, past, seq, keep = pad_rows(self.reserved, ids, past, seq, keep, self.pad_id)
            media = {name: pad_to(a, self.reserved, -1 if name == SPLICED_COLUMNS else 0)
                     for name, a in media.items()}
        binding = self._binding(first_row, *ids.shape, keep.shape[1])
        for name, array in inplace_feeds(ids, past, seq, keep).items():
            binding.arrays[name][...] = array
        for name, array in media.items():  # their shape varies with the splices: bound per call
            binding.io.bind_cpu_input(name, array)
        self.session.run_with_iobinding(binding.io)
        return binding.logits[:rows].copy()  # the array is the next call's output

    def _binding(self, first_row: int, rows: int, width: int, keep: int) -> _Binding:
        key = (first_row, rows, width, keep)
        binding = self._bindings.get(key)
        if binding is None:
            if self.capabilities.row_views:
                cache = [ort.OrtValue.ortvalue_from_numpy(c[first_row: first_row + rows]) for c in self.cache]
            else:
                cache = self.cache
            binding = _Binding(self.session, self.buffers, cache, rows, width, keep, self.vocab_size)
            self._bindings[key] = binding
            if len(self._bindings) > KEPT_BINDINGS:
                self._bindings.popitem(last=False)
        self._bindings.move_to_end(key)
        return binding

    def _zeroed(self, shape: tuple[int, ...], dtype: str) -> ort.OrtValue:
        storage, element_type = _CACHE_TYPES[dtype]
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), element_type, self.device, 0)
        value.update_inplace(np.zeros(shape, storage))
        return value


class _Binding:
    """One batch shape's inputs and logits as numpy arrays, bound once with the cache rows: OrtValues
    made from numpy arrays share their memory, so writing the arrays is all a call needs."""

    def __init__(self, session: ort.InferenceSession, buffers: Sequence[CacheTensor], cache: list[ort.OrtValue],
                 rows: int, width: int, keep: int, vocab_size: int):
        zeros = inplace_feeds(np.zeros((rows, width)), np.zeros(rows), np.ones(rows), np.zeros((rows, keep)))
        self.arrays = {name: array.copy() for name, array in zeros.items()}  # each its own memory
        self.logits = np.zeros((rows, keep, vocab_size), np.float32)
        self.io = session.io_binding()
        self._values = [*cache, *(ort.OrtValue.ortvalue_from_numpy(a) for a in (*self.arrays.values(), self.logits))]
        for buffer, value in zip(buffers, cache):
            self.io.bind_ortvalue_input(buffer.input_name, value)
            self.io.bind_ortvalue_output(buffer.output_name, value)
        for name, value in zip(self.arrays, self._values[len(cache):]):
            self.io.bind_ortvalue_input(name, value)
        self.io.bind_ortvalue_output(LOGITS, self._values[-1])

