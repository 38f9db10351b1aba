"""gemma-export: compiles Gemma checkpoints into ONNX artifacts and TensorRT engines.

The folder `gemma_export/` installs as the package `gemma_export`: checkpoint readers, the front
end, the passes, the emitters, verification and the CLI. The model definition lives in `graphs/`
(installed as `gemma_graphs`), the runtime in `runtime/` (installed as `gemma_runtime`)."""

__version__ = "0.1.0"
