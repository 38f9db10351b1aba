"""onnxruntime with the concatenating KV cache (target `generic`): each step's present
becomes the next step's past. Ragged batches are padded on the left and masked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gemma_runtime.backends.ort_session import create_session
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import MODEL_FILE, Manifest

_NP = {"fp32": np.float32, "fp16": np.float16}


class OrtConcatBackend:
    def __init__(self, folder: Path, manifest: Manifest, threads: int | None, device: str = "cpu"):
        self.session = create_session(folder / MODEL_FILE, threads, device)
        self.max_seq_len = manifest.kv_cache.max_seq_len
        self.pad_id = manifest.tokens.pad
        self.buffers = manifest.kv_cache.buffers
        self.output_names = ["logits", *(b.output_name for b in self.buffers)]
        self.cache: list[np.ndarray] = []
        self.mask = self.positions = None

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        width = max(len(p) for p in prompts)
        self._check_length(width)
        ids = np.full((len(prompts), width), self.pad_id, np.int64)
        self.mask = np.zeros((len(prompts), width), np.int64)
        for r, p in enumerate(prompts):  # left padding: every row's last token in the last column
            ids[r, width - len(p):] = p
            self.mask[r, width - len(p):] = 1
        self.positions = np.maximum(np.cumsum(self.mask, axis=1) - 1, 0)
        self.cache = [np.zeros((len(prompts), b.shape[1], 0, b.shape[3]), _NP[b.dtype]) for b in self.buffers]
        return self._run(ids)[:, -1]

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        batch = len(tokens)
        self._check_length(self.mask.shape[1] + 1)
        self.mask = np.concatenate([self.mask, np.ones((batch, 1), np.int64)], axis=1)
        self.positions = self.positions[:, -1:] + 1
        return self._run(np.asarray(tokens, np.int64).reshape(batch, 1))[:, -1]

    def teacher_forced(self, ids: list[int]) -> np.ndarray:
        self.prefill([ids])
        return self._logits

    def _check_length(self, width: int) -> None:
        """The graph computes past max_seq_len (its cache just grows) but was not exported for it."""
        if width > self.max_seq_len:
            raise RuntimeInputError(f"the sequence would exceed this artifact's maximum length {self.max_seq_len}")

    def _run(self, ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "position_ids": self.positions, "attention_mask": self.mask,
                 **{b.input_name: cache for b, cache in zip(self.buffers, self.cache)}}
        logits, *self.cache = self.session.run(self.output_names, feeds)
        self._logits = logits[0]
        return logits
