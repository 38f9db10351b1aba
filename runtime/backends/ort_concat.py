"""onnxruntime with the concatenating KV cache (target `generic`): each step's present
becomes the next step's past."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gemma_runtime.backends.ort_session import create_session

_NP = {"fp32": np.float32, "fp16": np.float16}


class OrtConcatBackend:
    def __init__(self, folder: Path, manifest: dict, threads: int | None):
        cfg = manifest["config"]
        self.session = create_session(folder / "model.onnx", threads)
        self.layers, self.kv_heads, self.head_dim = cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"]
        self.cache_dtype = _NP[manifest["kv_cache"]["dtype"]]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.cache: list[np.ndarray] = []

    def start(self, batch: int) -> None:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), self.cache_dtype)
        self.cache = [empty] * (2 * self.layers)

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        for i in range(self.layers):
            feeds[f"past_key.{i}"] = self.cache[2 * i]
            feeds[f"past_value.{i}"] = self.cache[2 * i + 1]
        logits, *self.cache = self.session.run(self.output_names, feeds)
        return logits
