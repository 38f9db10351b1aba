"""Checkpoint readers: an HF folder, a GGUF file, or the embedded default model."""

from __future__ import annotations

from pathlib import Path

from gemma_export.checkpoints.base import Source
from gemma_export.errors import CheckpointError


def open_source(path: Path | str | None) -> Source:
    if path is None:
        from gemma_export.checkpoints.default_model import default_gguf_path
        path = default_gguf_path()
    path = Path(path)
    if path.is_dir():
        from gemma_export.checkpoints.safetensors_dir import open_hf_folder
        return open_hf_folder(path)
    if path.is_file() and path.suffix == ".gguf":
        from gemma_export.checkpoints.gguf import open_gguf
        return open_gguf(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    raise CheckpointError(f"{path}: not a checkpoint (expected an HF folder with config.json or a .gguf file)")
