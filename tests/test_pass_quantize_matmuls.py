import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from gemma_export import quant
from gemma_export.passes import fold_weight_transposes, quantize_matmuls, set_opset
from gemma_export.passes.context import ExportOptions
from pass_harness import apply, feeds, op_types, traced

CASES = [("ort-cpu", "int4"), ("ort-cpu", "int8"), ("onnx", "int4"), ("onnx", "int8")]


def run_exact(model: ir.Model, feeds: dict) -> np.ndarray:
    """Logits with onnxruntime's graph optimizations off: it would otherwise fuse DequantizeLinear +
    MatMul into a MatMulNBits that quantizes the activations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]


def dequantized(model: ir.Model, options: ExportOptions) -> ir.Model:
    """The model with each MatMul weight replaced by its quantize-dequantize round trip."""
    out, _ = apply(model, None)
    for node in out.graph:
        if node.op_type == "MatMul" and node.inputs[1].is_initializer():
            w = node.inputs[1].const_value.numpy()
            s = quant.for_matrix(quant.scheme(options.quant, options.block_size), w.shape[0])
            node.inputs[1].const_value = ir.tensor(quant.dequantize(quant.quantize(w.T, s), s).T.copy())
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
    ours, fp32 = run_exact(quantized, f), run_exact(folded, f)
    ref = run_exact(dequantized(folded, options), f)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.abs(ours - fp32).max() > 100 * np.abs(ours - ref).max()  # the rounding is really there


def test_int4_weights_take_a_quarter_and_a_bit_of_fp32(tiny_checkpoints):
    options = ExportOptions(target="ort-cpu", quant="int4")
    model, ctx = traced(tiny_checkpoints["gemma3"], options)
    folded, _ = apply(model, ctx, fold_weight_transposes)
    quantized, _ = apply(folded, ctx, quantize_matmuls)
    fp32 = sum(v.const_value.nbytes for v in folded.graph.initializers.values() if v.name.endswith(".T"))
    q = sum(v.const_value.nbytes for v in quantized.graph.initializers.values()
            if v.name.endswith((".q", ".scales", ".zero_points")))
    assert q <= 0.2 * fp32  # 4 bits + a 32-bit scale and 4-bit zero point per block of 16 (hidden 48)
