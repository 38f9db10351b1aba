import numpy as np
import onnx_ir as ir
import pytest

from gemma_export.passes import fold_weight_transposes, quantize_embedding, quantize_matmuls, set_opset, tied_lm_head
from gemma_export.quantization import blocks, units
from gemma_export.targets import ExportOptions
from gemma_graphs.roles import roles
from pass_harness import apply, feeds, op_types, run, traced


def prepared(folder, options: ExportOptions):
    model, ctx = traced(folder, options)
    tied, _ = apply(model, ctx, set_opset, tied_lm_head, fold_weight_transposes)
    return tied, ctx


@pytest.mark.parametrize("target,method", [("ort-cpu", "int4"), ("ort-cpu", "int8"), ("onnx", "int4")])
def test_lookup_and_lm_head_read_one_quantized_table(target, method, tiny_checkpoints, monkeypatch):
    monkeypatch.setattr(quantize_matmuls, "ACCURACY_LEVEL", 0)
    options = ExportOptions(target=target, quant=method)
    tied, ctx = prepared(tiny_checkpoints["gemma2"], options)
    quantized, (count,) = apply(tied, ctx, quantize_embedding)
    embedding = roles(ctx.config).embedding
    assert count == 2 and embedding not in quantized.graph.initializers
    if target == "ort-cpu":
        assert "Gemm" not in op_types(quantized) and "Gather" not in op_types(quantized)
        gather = next(n for n in quantized.graph if n.op_type == "GatherBlockQuantized")
        lm_head = next(n for n in quantized.graph if n.op_type == "MatMulNBits")
        assert gather.inputs[0] is lm_head.inputs[1]  # one copy of the table
    else:
        (dq,) = [n for n in quantized.graph if n.op_type == "DequantizeLinear"]
        assert sorted(user.op_type for user, _ in dq.outputs[0].uses()) == ["Gather", "Gemm"]
    reference, _ = apply(tied, None)
    table = reference.graph.initializers[embedding]
    s = units.scheme_for(ctx, units.method_of(ctx).width, table.shape[1])
    table.const_value = ir.tensor(blocks.dequantize(blocks.quantize(table.const_value.numpy(), s), s))
    f = feeds(ctx.config, past=2)
    ours, ref, fp32 = (run(m, f, optimize=False)["logits"] for m in (quantized, reference, tied))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.abs(ours - fp32).max() > 100 * np.abs(ours - ref).max()


def test_keep_embeddings_fp_leaves_the_table(tiny_checkpoints):
    tied, ctx = prepared(tiny_checkpoints["gemma2"], ExportOptions(target="ort-cpu", quant="int4",
                                                                    keep_embeddings_fp=True))
    kept, (count,) = apply(tied, ctx, quantize_embedding)
    assert count == 0 and roles(ctx.config).embedding in kept.graph.initializers
