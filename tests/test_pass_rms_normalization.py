import numpy as np
import onnx_ir as ir

from gemma_export.frontend.onnx_ops import RMS_NORM
from gemma_export.passes import rms_normalization, set_opset
from gemma_export.passes.context import LEFT_ALONE
from pass_harness import apply, feeds, op_types, run, traced


def test_gemma_norms_become_rms_normalization_with_folded_weight(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma3"])  # sandwich norms and QK norms
    norms = op_types(model).count(RMS_NORM)
    after, (_, count) = apply(model, ctx, set_opset, rms_normalization)
    assert count == norms and RMS_NORM not in op_types(after)
    lowered = [n for n in after.graph if n.op_type == "RMSNormalization"]
    assert len(lowered) == norms
    assert {(n.attributes.get_int("axis"), n.attributes.get_int("stash_type")) for n in lowered} == {(-1, 1)}
    name = "model.layers.0.self_attn.q_norm.weight"
    np.testing.assert_array_equal(after.graph.initializers[f"{name}.plus_one"].const_value.numpy(),
                                  model.graph.initializers[name].const_value.numpy() + 1)
    f = feeds(ctx.config, past=2)
    np.testing.assert_allclose(run(after, f)["logits"], run(model, f)["logits"], rtol=1e-5, atol=1e-5)


def test_a_norm_whose_weight_is_not_stored_is_left_alone_with_the_reason(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma3"])
    norms = [n for n in model.graph if n.op_type == RMS_NORM][-2:]  # two: the count and the examples grow
    for i, norm in enumerate(norms):
        weight = ir.Value(name=f"runtime_weight_{i}", shape=norm.inputs[1].shape, type=norm.inputs[1].type)
        model.graph.inputs.append(weight)
        norm.replace_input_with(1, weight)
    after, (_, count) = apply(model, ctx, set_opset, rms_normalization)
    assert count == op_types(model).count(RMS_NORM) - 2 and op_types(after).count(RMS_NORM) == 2
    assert ctx.report[rms_normalization.NAME][LEFT_ALONE] == {
        "its weight is not an initializer": {"count": 2, "examples": [n.name for n in norms]}}
