import numpy as np

from gemma_export.frontend.onnx_ops import RMS_NORM
from gemma_export.passes import rms_norm
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
