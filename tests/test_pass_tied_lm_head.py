import numpy as np

from gemma_export.passes import tied_lm_head
from pass_harness import apply, feeds, op_types, run, traced


def test_tied_lm_head_reads_embedding_untransposed(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    after, (count,) = apply(model, ctx, tied_lm_head)
    assert count == 1
    gemm = [n for n in after.graph if n.op_type == "Gemm"]
    assert len(gemm) == 1 and gemm[0].inputs[1].name == "model.embed_tokens.weight"
    assert not any(n.op_type == "Transpose" and n.inputs[0].name == "model.embed_tokens.weight" for n in after.graph)
    f = feeds(ctx.config, past=3)
    before, now = run(model, f), run(after, f)
    np.testing.assert_allclose(now["logits"], before["logits"], rtol=1e-5, atol=1e-5)
    assert op_types(after).count("MatMul") == op_types(model).count("MatMul") - 1
