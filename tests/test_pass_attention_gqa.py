import numpy as np
import pytest

from gemma_export.frontend.onnx_ops import ATTENTION, ROPE
from gemma_export.passes import attention_gqa, inplace_cache_io, set_opset
from gemma_export.targets import ExportOptions
from pass_harness import apply, feeds, inplace_feeds, op_types, run, traced
from tiny import write_checkpoint

MAX = 32


# gemma2: grouped KV heads, softcap, sliding window; gemma3: multi-query, QK-norm, two RoPE bases.
@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_attention_becomes_attention_gqa_over_the_in_place_cache(name, tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints[name], ExportOptions(max_seq_len=MAX))
    cfg = ctx.config
    after, (_, count) = apply(model, ctx, inplace_cache_io, attention_gqa)
    assert count == cfg.num_layers and not {ATTENTION, ROPE} & set(op_types(after))
    gqas = [n for n in after.graph if n.op_type == "GroupQueryAttention"]
    windows = [n.attributes.get_int("local_window_size") for n in gqas]
    assert windows == [cfg.layer_window(i) or -1 for i in range(cfg.num_layers)]
    assert {n.attributes.get_float("softcap") for n in gqas} == {cfg.attn_softcap or 0.0}
    caches = {n.inputs[7].name for n in gqas}
    assert len(caches) == len({cfg.layer_rope(i) for i in range(cfg.num_layers)})
    # no 17th input (per-row query lengths): onnxruntime before 1.32 refuses the node with it
    assert {len(n.inputs) for n in gqas} == {9}
    # a batch's first prompt; then 9 new tokens after 5 cached ones, longer than the window (6), one
    # row (the kernel without query lengths takes a continuation of several rows only token by token)
    first = feeds(cfg, batch=2, past=0, seq=9)
    np.testing.assert_allclose(run(after, inplace_feeds(first, MAX))["logits"], run(model, first)["logits"],
                               rtol=1e-4, atol=1e-4)
    concat = feeds(cfg, batch=1, past=5, seq=9)
    before, now = run(model, concat), run(after, inplace_feeds(concat, MAX))
    np.testing.assert_allclose(now["logits"], before["logits"], rtol=1e-4, atol=1e-4)
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            np.testing.assert_allclose(now[f"present_{kind}.{i}"][:, :, :14], before[f"present_{kind}.{i}"],
                                       rtol=1e-5, atol=1e-5)


def test_a_head_dim_the_kernel_cannot_rotate_keeps_the_standard_form(tmp_path):
    """head_dim 40: GroupQueryAttention's rotary needs a multiple of 16, so every layer keeps
    TensorScatter + Attention over the same in-place cache, with the reason in the report."""
    model, ctx = traced(write_checkpoint("gemma-mqa", tmp_path / "hd40", head_dim=40), ExportOptions(max_seq_len=MAX))
    after, (_, _, count) = apply(model, ctx, set_opset, inplace_cache_io, attention_gqa)  # as the pipeline runs them
    assert count == 0 and "GroupQueryAttention" not in op_types(after)
    assert op_types(after).count("Attention") == ctx.config.num_layers and ROPE not in op_types(after)
    reasons = ctx.report["attention"]["unfused"]
    assert sorted(reasons) == ["0", "1", "2"] and all("head_dim 40" in r for r in reasons.values())
    concat = feeds(ctx.config, batch=2, past=5, seq=9)
    before, now = run(model, concat), run(after, inplace_feeds(concat, MAX))
    np.testing.assert_allclose(now["logits"], before["logits"], rtol=1e-4, atol=1e-4)


def test_the_layers_left_in_the_standard_form_are_known_from_the_config(tmp_path):
    """standard_layers() (which decides whether set_opset runs first) names the layers run() leaves."""
    model, ctx = traced(write_checkpoint("gemma-mqa", tmp_path / "hd24", head_dim=24, num_hidden_layers=2),
                        ExportOptions(max_seq_len=MAX))
    assert attention_gqa.standard_layers(ctx.config) == [0, 1]
    apply(model, ctx, set_opset, inplace_cache_io, attention_gqa)
    assert sorted(map(int, ctx.report["attention"]["unfused"])) == [0, 1]
    _, plain = traced(write_checkpoint("gemma-mqa", tmp_path / "hd32", num_hidden_layers=2))
    assert attention_gqa.standard_layers(plain.config) == []
