"""OpenVINO (CPU) with the growing KV cache (target `openvino`, or `generic` exported with
--inline-functions): OpenVINO reads the ONNX graph itself; backends/concat_cache.py drives it.
OpenVINO's CPU plugin computes in bf16 where the processor has bf16 units unless told otherwise:
the session asks for f32, the precision the graph was exported in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gemma_runtime.backends.concat_cache import ConcatCacheBackend
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import Manifest


class OpenVinoSession:
    """One compiled decoder and its infer request, run as onnxruntime's sessions are (GraphSession)."""

    def __init__(self, model_path: Path, threads: int | None):
        if threads is not None and threads < 1:
            raise RuntimeInputError(f"threads must be >= 1, got {threads}")
        try:
            import openvino
        except ImportError:
            raise RuntimeInputError("the openvino backend needs OpenVINO: pip install 'gemma-export[openvino]'") from None
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        try:
            self.compiled = openvino.Core().compile_model(str(model_path), "CPU", config)
        except RuntimeError as e:
            raise RuntimeInputError(f"{model_path}: OpenVINO cannot load it ({_reason(e)})") from None
        self.request = self.compiled.create_infer_request()
        self.output_index = {name: i for i, port in enumerate(self.compiled.outputs) for name in port.get_names()}

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feeds)  # copies the outputs: the next call reuses the request's buffers
        return [results[self.output_index[name]] for name in output_names]


class OpenVinoBackend(ConcatCacheBackend):
    def __init__(self, folder: Path, manifest: Manifest, threads: int | None):
        if manifest.kv_cache.update != "concat":
            raise RuntimeInputError(f"the openvino backend runs growing-cache artifacts (targets openvino, generic "
                                    f"--inline-functions), not target {manifest.target}'s in-place cache")
        super().__init__(OpenVinoSession(folder / manifest.decoder.file, threads), manifest, "cpu")


def _reason(error: Exception) -> str:
    """OpenVINO's message without the source locations it stacks before it."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.startswith(("Exception from ", "Check '"))]
    return " ".join(lines) or type(error).__name__
