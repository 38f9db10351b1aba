"""What a pass may read: the config, the user's options and a report it may add to."""

from __future__ import annotations

import dataclasses
from typing import Any

from gemma_export.config import GemmaConfig

TARGETS = ("generic", "onnx", "ort-cpu", "ort-cuda", "tensorrt")
DTYPES = ("fp32", "fp16", "bf16")
QUANTS = ("none", "int8", "int4")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    target: str = "ort-cpu"
    dtype: str = "fp32"
    quant: str = "none"
    block_size: int = 32
    calibrate: bool = False
    keep_embeddings_fp: bool = False
    max_seq_len: int = 4096


@dataclasses.dataclass
class PassContext:
    config: GemmaConfig
    options: ExportOptions
    report: dict[str, Any] = dataclasses.field(default_factory=dict)  # goes into the manifest
    tokenizer_model: bytes | None = None  # the source's SentencePiece model: calibration text -> ids
