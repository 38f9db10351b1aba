import numpy as np
import pytest

from gemma_export.frontend.onnx_ops import ATTENTION
from gemma_export.passes import attention_scatter, inplace_cache_io, set_opset
from gemma_export.passes.context import ExportOptions
from pass_harness import apply, feeds, inplace_feeds, op_types, run, traced

MAX = 32


@pytest.fixture(scope="module")
def graphs(tiny_checkpoints):
    """gemma2 (GQA, softcap, sliding window 6) before and after the lowering."""
    model, ctx = traced(tiny_checkpoints["gemma2"], ExportOptions(max_seq_len=MAX))
    after, counts = apply(model, ctx, set_opset, inplace_cache_io, attention_scatter)
    return model, after, ctx, counts[-1]


def test_attention_becomes_tensor_scatter_and_attention(graphs):
    _, after, ctx, count = graphs
    layers = ctx.config.num_layers
    assert count == layers and ATTENTION not in op_types(after)
    assert op_types(after).count("TensorScatter") == 2 * layers
    attention = [n for n in after.graph if n.op_type == "Attention"]
    assert len(attention) == layers
    assert {n.attributes.get_float("softcap") for n in attention} == {5.0}
    assert all(n.inputs[6] is not None for n in attention)  # nonpad_kv_seqlen
    assert all(n.inputs[1].producer().op_type == "Slice" for n in attention)  # only the longest row's keys
    assert ctx.report["kv_cache"]["update"] == "TensorScatter"


def test_prefill_after_a_past_longer_than_the_window(graphs):
    model, after, ctx, _ = graphs
    concat = feeds(ctx.config, past=5, seq=9)
    static = inplace_feeds(concat, MAX)
    before, now = run(model, concat), run(after, static)
    np.testing.assert_allclose(now["logits"], before["logits"], rtol=1e-5, atol=1e-5)
    for i in range(ctx.config.num_layers):
        cache = now[f"present_value.{i}"]
        np.testing.assert_allclose(cache[:, :, :14], before[f"present_value.{i}"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(cache[:, :, 14:], static[f"past_value.{i}"][:, :, 14:])  # untouched


def test_right_padded_rows_with_different_pasts_match_each_row_alone(graphs):
    model, after, ctx, _ = graphs
    cfg = ctx.config
    pasts, lengths, width = [2, 9], [9, 4], 9
    rows = [feeds(cfg, batch=1, seq=n, past=p, seed=r) for r, (p, n) in enumerate(zip(pasts, lengths))]
    static = [inplace_feeds(f, MAX) for f in rows]
    batch = {"input_ids": np.zeros((2, width), np.int64), "position_ids": np.zeros((2, width), np.int64),
             "past_lengths": np.asarray(pasts), "seq_lengths": np.asarray(lengths)}
    for r, (p, n) in enumerate(zip(pasts, lengths)):
        batch["input_ids"][r, :n] = rows[r]["input_ids"][0]
        batch["position_ids"][r] = np.arange(p, p + width)
    for name in static[0]:
        if name.startswith("past_"):
            batch[name] = np.concatenate([s[name] for s in static])
    now = run(after, batch)
    for r, (p, n) in enumerate(zip(pasts, lengths)):
        alone = run(model, rows[r])
        np.testing.assert_allclose(now["logits"][r, :n], alone["logits"][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(now["present_key.3"][r, :, :p + n], alone["present_key.3"][0], rtol=1e-5, atol=1e-5)
        assert np.isfinite(now["logits"][r]).all()
