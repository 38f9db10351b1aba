import numpy as np

from gemma_export.passes import fold_weight_transposes, tied_lm_head
from pass_harness import apply, feeds, run, traced


def test_weights_are_stored_transposed(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma2"])
    after, (_, count) = apply(model, ctx, tied_lm_head, fold_weight_transposes)
    cfg = ctx.config
    assert count == 7 * cfg.num_layers  # q, k, v, o, gate, up, down
    assert not any(n.op_type == "Transpose" for n in after.graph)
    q = after.graph.initializers["model.layers.0.self_attn.q_proj.weight.T"]
    assert tuple(q.const_value.shape) == (cfg.hidden_size, cfg.num_heads * cfg.head_dim)
    assert "model.layers.0.self_attn.q_proj.weight" not in after.graph.initializers
    f = feeds(cfg, past=2)
    np.testing.assert_allclose(run(after, f)["logits"], run(model, f)["logits"], rtol=1e-5, atol=1e-5)
