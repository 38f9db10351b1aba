"""onnxruntime with the concatenating KV cache (target `generic`): each step's present
becomes the next step's past. Ragged batches are padded on the left and masked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gemma_runtime.backends.ort_session import create_session

_NP = {"fp32": np.float32, "fp16": np.float16}


class OrtConcatBackend:
    def __init__(self, folder: Path, manifest: dict, threads: int | None):
        cfg = manifest["config"]
        self.session = create_session(folder / "model.onnx", threads)
        self.max_seq_len = int(manifest["kv_cache"]["max_seq_len"])
        self.pad_id = manifest["tokens"]["pad"]
        self.layers, self.kv_heads, self.head_dim = cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"]
        self.cache_dtype = _NP[manifest["kv_cache"]["dtype"]]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.cache: list[np.ndarray] = []
        self.mask = self.positions = None

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), self.pad_id, np.int64)
        self.mask = np.zeros((len(prompts), width), np.int64)
        for r, p in enumerate(prompts):  # left padding: every row's last token in the last column
            ids[r, width - len(p):] = p
            self.mask[r, width - len(p):] = 1
        self.positions = np.maximum(np.cumsum(self.mask, axis=1) - 1, 0)
        empty = np.zeros((len(prompts), self.kv_heads, 0, self.head_dim), self.cache_dtype)
        self.cache = [empty] * (2 * self.layers)
        return self._run(ids)[:, -1]

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        batch = len(tokens)
        self.mask = np.concatenate([self.mask, np.ones((batch, 1), np.int64)], axis=1)
        self.positions = self.positions[:, -1:] + 1
        return self._run(np.asarray(tokens, np.int64).reshape(batch, 1))[:, -1]

    def teacher_forced(self, ids: list[int]) -> np.ndarray:
        self.prefill([ids])
        return self._logits

    def _run(self, ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "position_ids": self.positions, "attention_mask": self.mask}
        for i in range(self.layers):
            feeds[f"past_key.{i}"] = self.cache[2 * i]
            feeds[f"past_value.{i}"] = self.cache[2 * i + 1]
        logits, *self.cache = self.session.run(self.output_names, feeds)
        self._logits = logits[0]
        return logits
