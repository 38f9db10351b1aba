"""onnxruntime session creation shared by the onnxruntime backends: threads, and the execution
provider of the device the caller chose among those the artifact's target runs on."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from gemma_runtime.errors import RuntimeInputError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# The oldest onnxruntime that runs every graph the exporter writes with parity (measured: 1.26 computes
# int4 MatMulNBits wrong without an error, 1.23 ort-cpu's attention).
MIN_ONNXRUNTIME = (1, 27)


def check_version(version: str | None = None) -> None:
    """A one-line error where this onnxruntime is older than MIN_ONNXRUNTIME."""
    version = ort.__version__ if version is None else version
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return  # a build that names itself otherwise: let onnxruntime judge the graph
    if found < MIN_ONNXRUNTIME:
        need = ".".join(map(str, MIN_ONNXRUNTIME))
        raise RuntimeInputError(f"onnxruntime {version} is too old: gemma-export's graphs need onnxruntime >= {need} "
                                f"(pip install -U 'onnxruntime>={need}')")


def provider(device: str, available: list[str] | None = None) -> str:
    """The execution provider for `device`; a clear error where this onnxruntime lacks it."""
    if device not in PROVIDERS:
        raise RuntimeInputError(f"unknown device {device!r} (devices: {', '.join(PROVIDERS)})")
    name = PROVIDERS[device]
    available = ort.get_available_providers() if available is None else available
    if name not in available:
        raise RuntimeInputError(
            f"device {device!r} needs onnxruntime's {name}, which this onnxruntime does not have "
            f"(it has {', '.join(available)}); for CUDA install gemma-export[gpu] (onnxruntime-gpu) "
            "in an environment without the CPU onnxruntime")
    return name


def create_session(model_path: Path, threads: int | None, device: str = "cpu") -> ort.InferenceSession:
    if threads is not None and threads < 1:
        raise RuntimeInputError(f"threads must be >= 1, got {threads}")
    check_version()
    options = ort.SessionOptions()
    # onnxruntime left at its defaults may use a single core here; use them all unless told.
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    name = provider(device)
    try:
        session = ort.InferenceSession(str(model_path), options, providers=[name])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RuntimeInputError(f"{model_path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
    if name not in session.get_providers():  # onnxruntime-gpu falls back to the CPU when CUDA fails to load
        raise RuntimeInputError(f"{model_path}: onnxruntime could not start {name} (no usable GPU or CUDA "
                                f"libraries); it runs {', '.join(session.get_providers())}")
    return session
