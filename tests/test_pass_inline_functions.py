import numpy as np

from gemma_export.frontend.onnx_ops import DOMAIN
from gemma_export.passes import inline_functions
from gemma_export.targets import TARGETS, ExportOptions
from pass_harness import apply, feeds, run, traced


def test_every_project_node_becomes_its_body_of_standard_ops(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma2"], ExportOptions(target="openvino"))
    calls = sum(1 for n in model.graph if n.domain == DOMAIN)
    after, (count,) = apply(model, ctx, inline_functions)
    assert count == calls > 0
    assert not after.functions and DOMAIN not in after.opset_imports
    assert {n.domain for n in after.graph} == {""}
    f = feeds(ctx.config, past=2)
    np.testing.assert_allclose(run(after, f)["logits"], run(model, f)["logits"], rtol=1e-6, atol=1e-6)


def test_acts_on_targets_that_inline_and_where_the_option_asks(tiny_checkpoints):
    _, ctx = traced(tiny_checkpoints["gemma2"])
    generic, openvino = TARGETS["generic"], TARGETS["openvino"]
    assert inline_functions.acts(openvino, ExportOptions(target="openvino"), ctx.config)
    assert not inline_functions.acts(generic, ExportOptions(target="generic"), ctx.config)
    assert inline_functions.acts(generic, ExportOptions(target="generic", inline_functions=True), ctx.config)
