import numpy as np

from gemma_export.passes import set_opset
from pass_harness import apply, feeds, run, traced


def test_graph_and_function_bodies_move_to_opset_24(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    assert model.opset_imports[""] < 24
    after, (count,) = apply(model, ctx, set_opset)
    assert count == 1 + len(model.functions)
    assert after.opset_imports[""] == 24 and after.ir_version >= 12
    assert all(f.opset_imports[""] == 24 for f in after.functions.values())
    f = feeds(ctx.config, past=3)
    before, now = run(model, f), run(after, f)
    for name, value in before.items():
        np.testing.assert_array_equal(now[name], value)
