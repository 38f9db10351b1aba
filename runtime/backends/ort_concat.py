"""onnxruntime with the growing KV cache (targets `generic`, `openvino`; backends/concat_cache.py)."""

from __future__ import annotations

from pathlib import Path

from gemma_runtime.backends.concat_cache import ConcatCacheBackend
from gemma_runtime.backends.ort_session import create_session
from gemma_runtime.manifest import Manifest


class OrtConcatBackend(ConcatCacheBackend):
    def __init__(self, folder: Path, manifest: Manifest, threads: int | None, device: str = "cpu"):
        super().__init__(create_session(folder / manifest.decoder.file, threads, device), manifest, device)
