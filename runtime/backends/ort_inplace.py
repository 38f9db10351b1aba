"""onnxruntime with the in-place KV cache (targets `onnx`, `ort-cpu`, `ort-cuda`; manifest
kv_cache.layout "inplace").

The graph interface every in-place target's passes produce (gemma_export/passes/inplace_cache_io.py
writes the inputs and outputs; each target's attention pass gives them their meaning):

  inputs
    input_ids      [batch, seq] int64    the new tokens; ragged rows RIGHT-padded (any pad id)
    position_ids   [batch, seq] int64    past_lengths[b] + column
    past_lengths   [batch] int64         valid tokens already in row b's cache
    seq_lengths    [batch] int64         valid new tokens of row b in this call (1..seq)
    logits_index   [batch, keep] int64   the columns whose logits are computed
    past_{name}                          [batch, kv_heads, length, head_dim], each cache buffer of the
                                         manifest's kv_cache.buffers: length max_seq_len, or the
                                         window of a sliding layer kept as a ring
  outputs
    logits         [batch, keep, vocab] float32
    present_{name}                       the same shape: the past buffer, updated in place

A call writes row b's real new keys and values at cache positions past_lengths[b] ..
past_lengths[b] + seq_lengths[b] - 1 and attends to the positions before past_lengths[b] +
seq_lengths[b]; the padded columns may write after them (never read; the row's next tokens
overwrite it), so past_lengths[b] + seq <= max_seq_len
(manifest kv_cache.max_seq_len, the static cache length). A ring (a buffer
whose layout is "ring") holds position p in slot p mod window and is written whole by the graph.
The runtime allocates each buffer by its shape in the manifest, once, whichever layers read it. Multi-query models
keep one KV head.
Cache entries beyond the valid lengths are still read by some kernels (masked by addition) and
so must be finite: a buffer is zeroed once, when allocated.

The runtime binds one OrtValue per cache buffer as both past_{name} and present_{name}
(IOBinding), allocated once per batch size and never copied between steps. A decode step binds
nothing: its inputs and its logits are numpy arrays bound once per batch size (the OrtValues share
their memory), which the step overwrites before running. Prefill and teacher-forced calls, whose
shapes vary, bind their inputs and logits per call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from gemma_runtime.manifest import MODEL_FILE, Manifest
from gemma_runtime.backends.ort_session import create_session
from gemma_runtime.errors import RuntimeInputError

# a cache buffer's dtype -> (numpy type of the zeros, ONNX element type). bf16 has no numpy type:
# its zeros are uint16 zeros copied into a bfloat16 OrtValue (GPU targets compute in bf16).
_CACHE_TYPES = {"fp32": (np.float32, 1), "fp16": (np.float16, 10), "bf16": (np.uint16, 16)}
_VIEW_DTYPES = ("fp32", "fp16")  # cache dtypes forward() can bind as numpy row views (bf16 has no numpy type)


class OrtInplaceBackend:
    def __init__(self, folder: Path, manifest: Manifest, threads: int | None, device: str = "cpu"):
        kv = manifest.kv_cache
        self.session = create_session(folder / MODEL_FILE, threads, device)
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.max_seq_len = kv.max_seq_len
        self.pad_id = manifest.tokens.pad
        self.buffers = kv.buffers
        self.vocab_size = manifest.config["vocab_size"]
        self.binding = self.session.io_binding()  # prefill and teacher-forced calls
        self.step: _DecodeStep | None = None
        self.cache: list[ort.OrtValue] = []
        self.lengths = np.zeros(0, np.int64)
        self.reserved = 0  # rows reserved for forward()
        self.views: list[np.ndarray] | None = None

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        lengths = np.asarray([len(p) for p in prompts], np.int64)
        ids = np.full((len(prompts), lengths.max()), self.pad_id, np.int64)
        for r, p in enumerate(prompts):
            ids[r, :len(p)] = p
        self._start(len(prompts), ids.shape[1])
        return self._run(ids, np.zeros_like(lengths), lengths, (lengths - 1)[:, None])[:, 0]

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """[batch, vocab] logits of one new token per row."""
        ids = np.asarray(tokens, np.int64).reshape(-1, 1)
        if len(ids) != len(self.lengths):
            raise RuntimeInputError(f"decode got {len(ids)} tokens for a batch of {len(self.lengths)}")
        if int(self.lengths.max()) + 1 > self.max_seq_len:
            raise RuntimeInputError(f"the sequence would exceed this artifact's maximum length {self.max_seq_len}")
        return self._decode_step(ids)

    def _decode_step(self, ids: np.ndarray) -> np.ndarray:
        step = self.step
        step.ids[:] = ids
        step.past[:] = self.lengths
        step.positions[:, 0] = self.lengths
        self.session.run_with_iobinding(step.binding)
        self.lengths = self.lengths + 1
        return step.logits[:, 0].copy()  # the buffer is the next step's output

    def reserve(self, rows: int) -> None:
        """Cache rows for forward() (continuous batching). On the CPU with fp32/fp16 caches they are
        numpy arrays, so a call over the first n rows binds views of them and costs a batch of n,
        not of every row reserved; elsewhere every call runs all rows."""
        self.reserved = rows
        self.views = None
        if self.device == "cpu" and all(b.dtype in _VIEW_DTYPES for b in self.buffers):
            self.views = [np.zeros((rows, *b.shape[1:]), _CACHE_TYPES[b.dtype][0]) for b in self.buffers]
        else:
            self._allocate(rows)

    def forward(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, first_row: int = 0) -> np.ndarray:
        """One call over reserved rows first_row... first_row + len(ids), each continuing its own
        sequence: row b feeds ids[b, :seq[b]] at positions past[b]...; [rows, vocab] logits at each
        row's last fed token. A row restarted at past 0 overwrites what it reads. Without row views
        the call starts at row 0 (first_row must be 0) and runs every reserved row."""
        ids, past, seq = (np.asarray(a, np.int64) for a in (ids, past, seq))
        if self.views is None:  # every reserved row, padded
            if first_row:
                raise RuntimeInputError("this backend runs every reserved row: first_row must be 0")
            rows = len(ids)
            pad = self.reserved - rows
            ids = np.pad(ids, ((0, pad), (0, 0)), constant_values=self.pad_id)
            past, seq = np.pad(past, (0, pad)), np.pad(seq, (0, pad), constant_values=1)
            return self._run(ids, past, seq, (seq - 1)[:, None])[:rows, 0]
        binding = self.session.io_binding()
        values = [ort.OrtValue.ortvalue_from_numpy(v[first_row: first_row + len(ids)]) for v in self.views]  # no copy
        for buffer, value in zip(self.buffers, values):
            binding.bind_ortvalue_input(buffer.input_name, value)
            binding.bind_ortvalue_output(buffer.output_name, value)
        feeds = {"input_ids": ids, "position_ids": past[:, None] + np.arange(ids.shape[1], dtype=np.int64),
                 "past_lengths": past, "seq_lengths": seq, "logits_index": (seq - 1)[:, None]}
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        return np.array(binding.get_outputs()[len(values)].numpy())[:, 0]

    def teacher_forced(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        self._start(1, n)
        return self._run(np.asarray([ids], np.int64), np.zeros(1, np.int64), np.asarray([n], np.int64),
                         np.arange(n, dtype=np.int64)[None])[0]

    def _start(self, batch: int, width: int) -> None:
        """A new sequence per row: checked first, so a refused call leaves the state as it was."""
        if width > self.max_seq_len:
            raise RuntimeInputError(f"the sequence would exceed this artifact's maximum length {self.max_seq_len}")
        self._allocate(batch)
        self.lengths = np.zeros(batch, np.int64)

    def _allocate(self, batch: int) -> None:
        """Zeroed cache buffers for this batch size, each bound as both past and present."""
        if self.cache and self.cache[0].shape()[0] == batch:
            return
        self.cache = [self._zeroed((batch, *b.shape[1:]), b.dtype) for b in self.buffers]
        self.step = _DecodeStep(self.session, batch, self.vocab_size)
        for binding in (self.binding, self.step.binding):
            for buffer, value in zip(self.buffers, self.cache):
                binding.bind_ortvalue_input(buffer.input_name, value)
                binding.bind_ortvalue_output(buffer.output_name, value)

    def _zeroed(self, shape: tuple[int, ...], dtype: str) -> ort.OrtValue:
        storage, element_type = _CACHE_TYPES[dtype]
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), element_type, self.device, 0)
        value.update_inplace(np.zeros(shape, storage))
        return value

    def _run(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray) -> np.ndarray:
        width = ids.shape[1]
        if int((past + width).max()) > self.max_seq_len:
            raise RuntimeInputError(f"the sequence would exceed this artifact's maximum length {self.max_seq_len}")
        feeds = {"input_ids": ids, "position_ids": past[:, None] + np.arange(width, dtype=np.int64),
                 "past_lengths": past, "seq_lengths": seq, "logits_index": keep}
        for name, array in feeds.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(array, np.int64))
        self.binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(self.binding)
        self.lengths = past + seq
        logits = self.binding.get_outputs()[len(self.cache)]  # bound after the caches
        return np.array(logits.numpy())  # numpy() is a view of onnxruntime's buffer


class _DecodeStep:
    """A decode step's inputs and logits, bound once: OrtValues made from numpy arrays share their
    memory, so writing the arrays is all a step needs."""

    def __init__(self, session: ort.InferenceSession, batch: int, vocab_size: int):
        self.ids = np.zeros((batch, 1), np.int64)
        self.positions = np.zeros((batch, 1), np.int64)
        self.past = np.zeros(batch, np.int64)
        self.logits = np.zeros((batch, 1, vocab_size), np.float32)
        inputs = {"input_ids": self.ids, "position_ids": self.positions, "past_lengths": self.past,
                  "seq_lengths": np.ones(batch, np.int64), "logits_index": np.zeros((batch, 1), np.int64)}
        self.binding = session.io_binding()
        self._keep = [ort.OrtValue.ortvalue_from_numpy(a) for a in (*inputs.values(), self.logits)]
        for name, value in zip(inputs, self._keep):
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_ortvalue_output("logits", self._keep[-1])
