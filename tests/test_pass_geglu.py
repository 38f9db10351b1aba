import numpy as np

from gemma_export.frontend.onnx_ops import GEGLU
from gemma_export.passes import geglu
from pass_harness import apply, feeds, op_types, run, traced


def test_geglu_becomes_tanh_gelu_times_up(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    after, (count,) = apply(model, ctx, geglu)
    assert count == ctx.config.num_layers and GEGLU not in op_types(after)
    gelus = [n for n in after.graph if n.op_type == "Gelu"]
    assert len(gelus) == count and {n.attributes.get_string("approximate") for n in gelus} == {"tanh"}
    f = feeds(ctx.config)
    np.testing.assert_allclose(run(after, f)["logits"], run(model, f)["logits"], rtol=1e-5, atol=1e-5)
