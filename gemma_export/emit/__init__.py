"""Emitters: the artifact directory (ONNX + weights + manifest + tokenizer)."""
