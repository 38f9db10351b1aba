import numpy as np
import onnx_ir as ir
import pytest

from gemma_export.passes import fold_weight_transposes, quantize_matmuls, set_opset
from gemma_export.passes.context import PassContext
from gemma_export.quantization import blocks, units
from gemma_export.targets import ExportOptions
from pass_harness import apply, feeds, op_types, run, traced

# MatMulNBits 4-bit; DequantizeLinear int8 and uint4 with zero points; signed int4 (TensorRT). MatMulNBits
# 8-bit is covered by test_pass_quantize_embedding.
CASES = [("ort-cpu", "int4"), ("onnx", "int8"), ("onnx", "int4"), ("tensorrt", "int4")]


def dequantized(model: ir.Model, ctx: PassContext) -> ir.Model:
    """The model with each MatMul weight replaced by its quantize-dequantize round trip."""
    out, _ = apply(model, None)
    for node in out.graph:
        if node.op_type == "MatMul" and node.inputs[1].is_initializer():
            w = node.inputs[1].const_value.numpy()
            s = units.scheme_for(ctx, units.method_of(ctx).width, w.shape[0])
            node.inputs[1].const_value = ir.tensor(blocks.dequantize(blocks.quantize(w.T, s), s).T.copy())
    return out


@pytest.mark.parametrize("target,method", CASES)
def test_matmuls_read_quantized_weights(target, method, tiny_checkpoints, monkeypatch):
    monkeypatch.setattr(quantize_matmuls, "ACCURACY_LEVEL", 0)  # fp32 activations: exact products
    options = ExportOptions(target=target, quant=method)
    model, ctx = traced(tiny_checkpoints["gemma3"], options)
    folded, _ = apply(model, ctx, set_opset, fold_weight_transposes)
    quantized, (count,) = apply(folded, ctx, quantize_matmuls)
    matmuls = 7 * ctx.config.num_layers  # q, k, v, o, gate, up, down (the lm_head is the embedding's)
    assert count == matmuls and op_types(folded).count("MatMul") == matmuls + 1
    if target == "ort-cpu":
        assert op_types(quantized).count("MatMulNBits") == matmuls and op_types(quantized).count("MatMul") == 1
    else:
        assert op_types(quantized).count("DequantizeLinear") == matmuls
    f = feeds(ctx.config, past=2)
    ours, fp32 = (run(m, f, optimize=False)["logits"] for m in (quantized, folded))
    ref = run(dequantized(folded, ctx), f, optimize=False)["logits"]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.abs(ours - fp32).max() > 100 * np.abs(ours - ref).max()  # the rounding is really there

