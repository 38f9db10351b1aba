"""The front end (gemma_export.frontend): traces gemma_graphs' model into ONNX on the meta device
and binds the checkpoint's weights; the ONNX form of the custom ops."""
