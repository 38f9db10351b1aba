"""gemma-export: compiles Gemma checkpoints into ONNX artifacts and TensorRT engines."""

__version__ = "0.1.0"
