import numpy as np
import onnx_ir as ir

from gemma_export.frontend.onnx_ops import RMS_NORM
from gemma_export.passes import rms_norm
from gemma_export.passes.context import LEFT_ALONE
from pass_harness import apply, feeds, op_types, run, traced


def test_gemma_norms_become_simplified_layer_normalization_with_folded_weight(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma3"])  # sandwich norms and QK norms (4-D)
    norms = op_types(model).count(RMS_NORM)
    after, (count,) = apply(model, ctx, rms_norm)
    assert count == norms and RMS_NORM not in op_types(after)
    lowered = [n for n in after.graph if n.op_type == "SimplifiedLayerNormalization"]
    assert len(lowered) == norms and {n.domain for n in lowered} == {""}  # onnxruntime's CPU-registered one
    assert {(n.attributes.get_int("axis"), n.attributes.get_int("stash_type")) for n in lowered} == {(-1, 1)}
    name = "model.layers.1.pre_feedforward_layernorm.weight"
    np.testing.assert_array_equal(after.graph.initializers[f"{name}.plus_one"].const_value.numpy(),
                                  model.graph.initializers[name].const_value.numpy() + 1)
    f = feeds(ctx.config, past=2)
    before, now = run(model, f), run(after, f)
    for key in before:
        np.testing.assert_allclose(now[key], before[key], rtol=1e-5, atol=1e-5)


def test_a_norm_whose_weight_is_not_stored_is_left_alone_with_the_reason(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    norm = next(n for n in model.graph if n.op_type == RMS_NORM)
    weight = ir.Value(name="runtime_weight", shape=norm.inputs[1].shape, type=norm.inputs[1].type)
    model.graph.inputs.append(weight)
    norm.replace_input_with(1, weight)
    norms = op_types(model).count(RMS_NORM)
    after, (count,) = apply(model, ctx, rms_norm)
    assert count == norms - 1 and op_types(after).count(RMS_NORM) == 1
    assert ctx.report[rms_norm.NAME][LEFT_ALONE] == {
        "its weight is not an initializer": {"count": 1, "examples": [norm.name]}}
