import dataclasses

import numpy as np
import pytest

from gemma_export.passes import attention_onnx, inplace_cache_io, set_opset
from gemma_export.targets import ExportOptions
from pass_harness import apply, feeds, inplace_feeds, run, traced

MAX = 24


@pytest.fixture(scope="module")
def gemma_mqa(tiny_checkpoints):
    return traced(tiny_checkpoints["gemma-mqa"], ExportOptions(max_seq_len=MAX))


def test_interface_is_the_in_place_contract(gemma_mqa):
    model, traced_ctx = gemma_mqa
    ctx = dataclasses.replace(traced_ctx, report={})
    cfg = ctx.config
    after, (count,) = apply(model, ctx, inplace_cache_io)
    assert count == 4 * cfg.num_layers
    inputs = {v.name: (v.dtype.name, list(v.shape)) for v in after.graph.inputs}
    cache = ("FLOAT", ["batch", 1, MAX, cfg.head_dim])  # multi-query: one KV head
    expected = {"input_ids": ("INT64", ["batch", "seq"]), "position_ids": ("INT64", ["batch", "seq"]),
                "past_lengths": ("INT64", ["batch"]), "seq_lengths": ("INT64", ["batch"]),
                **{f"past_{kind}.{i}": cache for i in range(cfg.num_layers) for kind in ("key", "value")}}
    assert inputs == expected
    outputs = {v.name: list(v.shape) for v in after.graph.outputs if v.name != "logits"}
    assert outputs == {f"present_{kind}.{i}": cache[1] for i in range(cfg.num_layers) for kind in ("key", "value")}
    assert all(len(n.inputs) == 5 for n in inplace_cache_io.attention_nodes(after.graph))  # mask gone


def test_same_outputs_once_attention_is_lowered(gemma_mqa):
    model, ctx = gemma_mqa
    after, _ = apply(model, ctx, set_opset, inplace_cache_io, attention_onnx)
    concat = feeds(ctx.config, past=5, seq=7)
    before, now = run(model, concat), run(after, inplace_feeds(concat, MAX))
    np.testing.assert_allclose(now["logits"], before["logits"], rtol=1e-5, atol=1e-5)
    for i in range(ctx.config.num_layers):
        np.testing.assert_allclose(now[f"present_key.{i}"][:, :, :12], before[f"present_key.{i}"], rtol=1e-5, atol=1e-5)
