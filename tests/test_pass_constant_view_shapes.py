import numpy as np

from gemma_export.passes import constant_view_shapes
from pass_harness import apply, feeds, op_types, run, traced


def test_head_views_get_constant_shapes(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma3"])
    cfg = ctx.config
    after, (count,) = apply(model, ctx, constant_view_shapes)
    assert count == 3 * cfg.num_layers  # the q, k and v views
    targets = {tuple(n.inputs[1].const_value.numpy()) for n in after.graph if n.op_type == "Reshape"}
    assert targets == {(0, 0, cfg.num_heads, cfg.head_dim), (0, 0, cfg.num_kv_heads, cfg.head_dim)}
    assert op_types(after).count("Concat") == 0 and op_types(model).count("Concat") == count
    f = feeds(cfg, past=2)
    np.testing.assert_allclose(run(after, f)["logits"], run(model, f)["logits"], rtol=1e-6, atol=1e-6)
