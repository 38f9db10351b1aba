"""onnxruntime session creation shared by the onnxruntime backends."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from gemma_runtime.errors import RuntimeInputError


def create_session(model_path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # onnxruntime left at its defaults may use a single core here; use them all unless told.
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if threads is not None and threads < 1:
        raise RuntimeInputError(f"threads must be >= 1, got {threads}")
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RuntimeInputError(f"{model_path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
