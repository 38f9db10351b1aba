import numpy as np
import pytest

from gemma_export.passes import attention_tensorrt
from gemma_export.targets import TARGETS, ExportOptions
from pass_harness import apply, feeds, inplace_feeds, op_types, run, traced

MAX = 32
BEFORE = TARGETS["tensorrt"].pass_modules()[:TARGETS["tensorrt"].passes.index(attention_tensorrt.NAME)]


def lowered(checkpoint, dtype="fp32"):
    """The model after the tensorrt target's passes before this one and after this one too, and
    its rewrite count."""
    model, ctx = traced(checkpoint, ExportOptions(target="tensorrt", max_seq_len=MAX, dtype=dtype))
    before, _ = apply(model, ctx, *BEFORE)
    after, counts = apply(before, ctx, attention_tensorrt)
    return before, after, ctx, counts[0]


def static_feeds(cfg, past: int, seq: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """In-place cache feeds asking for the logits of every position."""
    out = inplace_feeds(feeds(cfg, past=past, seq=seq), MAX)
    out = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in out.items()}
    return {**out, "logits_index": np.tile(np.arange(seq), (len(out["input_ids"]), 1))}


def attention_attributes(model):
    return [set(n.attributes) for n in model.graph if n.op_type == "Attention"]


@pytest.fixture(scope="module")
def gemma2(tiny_checkpoints):
    """GQA 4:2, softcap 5, sliding window 6."""
    return lowered(tiny_checkpoints["gemma2"])


def test_every_soft_capped_attention_is_spelled_out(gemma2):
    before, after, ctx, count = gemma2
    assert op_types(before).count("Attention") == count == ctx.config.num_layers
    assert "Attention" not in op_types(after)
    assert op_types(after).count("Tanh") == count + 1  # + the final logit softcap
    assert op_types(after).count("TensorScatter") == 2 * count  # the cache update is untouched


@pytest.mark.parametrize("past, seq", [(0, 9), (5, 9), (13, 1)])
def test_outputs_agree_with_the_attention_op(gemma2, past, seq):
    before, after, ctx, _ = gemma2
    static = static_feeds(ctx.config, past, seq)
    expected, got = run(before, static), run(after, static)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_fp16_attention_keeps_no_softmax_precision_and_agrees(tiny_checkpoints, name):
    before, after, ctx, count = lowered(tiny_checkpoints[name], "fp16")
    assert count == ctx.config.num_layers
    assert all("softmax_precision" in a for a in attention_attributes(before))
    assert not any("softmax_precision" in a or "softcap" in a for a in attention_attributes(after))
    static = static_feeds(ctx.config, 5, 9, np.float16)
    expected, got = run(before, static)["logits"], run(after, static)["logits"]
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max()


def test_fp32_attention_without_softcap_is_left_alone(tiny_checkpoints):
    before, after, _, count = lowered(tiny_checkpoints["gemma3"])
    assert count == 0 and op_types(after) == op_types(before)
    assert attention_attributes(after) == attention_attributes(before)
