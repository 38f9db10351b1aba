import numpy as np

from gemma_export.passes import logits_index, tied_lm_head
from pass_harness import apply, feeds, run, traced


def test_logits_only_at_requested_positions(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma3"])
    after, (_, count) = apply(model, ctx, tied_lm_head, logits_index)
    assert count == 1
    f = feeds(ctx.config, batch=2, seq=8, past=3)
    full = run(model, f)["logits"]
    f["logits_index"] = np.asarray([[7], [4]], np.int64)  # a different last position per row
    picked = run(after, f)["logits"]
    assert picked.shape == (2, 1, ctx.config.vocab_size)
    np.testing.assert_allclose(picked[0, 0], full[0, 7], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(picked[1, 0], full[1, 4], rtol=1e-5, atol=1e-5)
    f["logits_index"] = np.tile(np.arange(8), (2, 1))
    np.testing.assert_allclose(run(after, f)["logits"], full, rtol=1e-5, atol=1e-5)
