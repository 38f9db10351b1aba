"""Backends run an artifact's decoder graph and own its KV cache rows and padding scheme. Each
implements the protocol of backends/protocol.py (reserve, one step call, declared capabilities)
on its own: ort_inplace (onnxruntime, in-place cache), ort_concat and openvino (onnxruntime and
OpenVINO over concat_cache's growing cache), trt (TensorRT engines)."""
