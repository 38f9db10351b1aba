import numpy as np

from gemma_export.frontend.onnx_ops import GEGLU
from gemma_export.passes import geglu
from gemma_export.passes.context import LEFT_ALONE
from pass_harness import apply, feeds, op_types, run, traced


def test_geglu_becomes_tanh_gelu_times_up(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    after, (count,) = apply(model, ctx, geglu)
    assert count == ctx.config.num_layers and GEGLU not in op_types(after)
    gelus = [n for n in after.graph if n.op_type == "Gelu"]
    assert len(gelus) == count and {n.attributes.get_string("approximate") for n in gelus} == {"tanh"}
    f = feeds(ctx.config)
    np.testing.assert_allclose(run(after, f)["logits"], run(model, f)["logits"], rtol=1e-5, atol=1e-5)


def test_below_opset_20_no_geglu_is_lowered_and_the_report_says_why(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    model.opset_imports[""] = 18
    after, (count,) = apply(model, ctx, geglu)
    assert count == 0 and op_types(after).count(GEGLU) == ctx.config.num_layers and "Gelu" not in op_types(after)
    left = ctx.report[geglu.NAME][LEFT_ALONE]
    assert list(left) == ["the graph's opset 18 has no Gelu (opset 20)"]
    assert left["the graph's opset 18 has no Gelu (opset 20)"]["count"] == ctx.config.num_layers
