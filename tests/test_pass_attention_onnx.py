import numpy as np
import pytest

from gemma_export.frontend.onnx_ops import ATTENTION
from gemma_export.passes import attention_onnx, inplace_cache_io, set_opset
from gemma_export.passes.context import LEFT_ALONE
from gemma_export.targets import ExportOptions
from pass_harness import apply, cache_slots, feeds, inplace_feeds, op_types, ring_windows, run, traced

MAX = 32


@pytest.fixture(scope="module")
def graphs(tiny_checkpoints):
    """gemma2 (GQA, softcap, sliding window 6) before and after the lowering."""
    model, ctx = traced(tiny_checkpoints["gemma2"], ExportOptions(target="onnx", max_seq_len=MAX))
    after, counts = apply(model, ctx, set_opset, inplace_cache_io, attention_onnx)
    return model, after, ctx, counts[-1]


WINDOW = 6


def test_attention_becomes_tensor_scatter_and_attention(graphs):
    _, after, ctx, count = graphs
    layers = ctx.config.num_layers
    assert count == layers and ATTENTION not in op_types(after)
    scatters = [n for n in after.graph if n.op_type == "TensorScatter"]
    assert len(scatters) == 2 * layers
    attention = [n for n in after.graph if n.op_type == "Attention"]
    assert len(attention) == layers
    assert {n.attributes.get_float("softcap") for n in attention} == {5.0}
    rings = ring_windows(after, MAX)
    assert rings == {0: WINDOW, 2: WINDOW}  # gemma2: even layers slide
    for i, node in enumerate(attention):
        if i in rings:  # the ring's filled slots, then the new keys; visibility from positions alone
            assert node.inputs[1].producer().op_type == "Concat" and len(node.inputs) == 4
        else:  # only the longest row's keys, nonpad_kv_seqlen
            assert node.inputs[1].producer().op_type == "Slice" and node.inputs[6] is not None
    modes = sorted(n.attributes.get_string("mode", "linear") for n in scatters)
    assert modes == ["circular"] * 4 + ["linear"] * 4
    shapes = {v.name: v.shape[2] for v in [*after.graph.inputs, *after.graph.outputs] if "_key." in v.name}
    assert shapes == {"past_key.0": WINDOW, "past_key.1": MAX, "past_key.2": WINDOW, "past_key.3": MAX,
                      "present_key.0": WINDOW, "present_key.1": MAX, "present_key.2": WINDOW, "present_key.3": MAX}


def _assert_cache(cache, reference, held: int, window: int | None):
    """cache (one row or a batch) holds positions < held of reference at their slots."""
    for position, slot in cache_slots(held, window):
        np.testing.assert_allclose(cache[:, :, slot], reference[:, :, position], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("past,seq", [(5, 9), (9, 1), (0, 4), (13, 2)])
def test_calls_across_the_window_match_the_concatenating_graph(graphs, past, seq):
    model, after, ctx, _ = graphs
    rings = ring_windows(after, MAX)
    concat = feeds(ctx.config, past=past, seq=seq)
    static = inplace_feeds(concat, MAX, windows=rings)
    before, now = run(model, concat), run(after, static)
    np.testing.assert_allclose(now["logits"], before["logits"], rtol=1e-5, atol=1e-5)
    for i in range(ctx.config.num_layers):
        _assert_cache(now[f"present_value.{i}"], before[f"present_value.{i}"], past + seq, rings.get(i))
    full = now["present_value.1"]
    np.testing.assert_array_equal(full[:, :, past + seq:], static["past_value.1"][:, :, past + seq:])  # untouched


@pytest.mark.parametrize("pasts,lengths", [([2, 9], [9, 4]), ([0, 14, 5], [1, 3, 8]), ([20, 6, 0], [7, 1, 2])])
def test_right_padded_rows_with_different_pasts_match_each_row_alone(graphs, pasts, lengths):
    model, after, ctx, _ = graphs
    cfg = ctx.config
    rings = ring_windows(after, MAX)
    width, batch_size = max(lengths), len(pasts)
    rows = [feeds(cfg, batch=1, seq=n, past=p, seed=r) for r, (p, n) in enumerate(zip(pasts, lengths))]
    static = [inplace_feeds(f, MAX, windows=rings) for f in rows]
    batch = {"input_ids": np.zeros((batch_size, width), np.int64), "position_ids": np.zeros((batch_size, width), np.int64),
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
        for i in (2, 3):  # a ring and a full-length cache
            _assert_cache(now[f"present_key.{i}"][r:r + 1], alone[f"present_key.{i}"], p + n, rings.get(i))
        assert np.isfinite(now["logits"][r]).all()


def test_an_attention_still_taking_a_mask_is_left_alone_with_the_reason(tiny_checkpoints):
    """Before inplace_cache_io each GemmaAttention reads attention_mask and concatenates its cache:
    not the in-place form this lowering gives meaning to."""
    model, ctx = traced(tiny_checkpoints["gemma-mqa"], ExportOptions(target="onnx", max_seq_len=MAX))
    after, (_, count) = apply(model, ctx, set_opset, attention_onnx)
    assert count == 0 and op_types(after).count(ATTENTION) == ctx.config.num_layers
    reason = "it still takes an attention mask: not on the in-place cache interface"
    assert ctx.report[attention_onnx.NAME][LEFT_ALONE] == {
        reason: {"count": ctx.config.num_layers, "examples": [n.name for n in model.graph if n.op_type == ATTENTION][:3]}}


@pytest.mark.parametrize("past,seq", [(5, 9), (0, 4)])
def test_gemma4_shared_caches_and_head_dims_through_the_harness(gemma4_checkpoints, past, seq):
    """The harness feeds Gemma 4's graphs from the model's own cache tensors: per-layer head dims
    (sliding 32, global 64) and caches shared by later layers, before and after the lowering."""
    model, ctx = traced(gemma4_checkpoints["gemma4-shared"], ExportOptions(target="onnx", max_seq_len=MAX))
    after, counts = apply(model, ctx, set_opset, inplace_cache_io, attention_onnx)
    assert counts[-1] == ctx.config.num_layers
    concat = feeds(ctx.config, past=past, seq=seq)
    assert {v.shape[3] for k, v in concat.items() if k.startswith("past_key.")} == {32, 64}
    static = inplace_feeds(concat, MAX, windows=ring_windows(after, MAX))
    np.testing.assert_allclose(run(after, static)["logits"], run(model, concat)["logits"], rtol=1e-5, atol=1e-5)
