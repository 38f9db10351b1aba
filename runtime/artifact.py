"""The artifact contract as the runtime reads it (the exporter writes the same names)."""

from __future__ import annotations

import json
from pathlib import Path

from gemma_runtime.errors import RuntimeInputError

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"


def read_manifest(folder: Path | str) -> dict:
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeInputError(f"{folder}: not an artifact (no {MANIFEST_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RuntimeInputError(f"{path}: unreadable ({e})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise RuntimeInputError(
            f"{path}: format_version {version!r} is not supported by this runtime (it reads {FORMAT_VERSION})")
    return manifest
