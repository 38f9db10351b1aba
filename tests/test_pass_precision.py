import numpy as np
import onnx_ir as ir
import pytest

from gemma_export.passes import precision
from gemma_export.targets import LOW_PRECISION, TARGETS, ExportOptions
from pass_harness import apply, feeds, inplace_feeds, ring_windows, run, traced

MAX_SEQ_LEN = 32


def fused(folder, target: str, dtype: str):
    """The target's fp32 graph (every pass before the low-precision ones)."""
    model, ctx = traced(folder, ExportOptions(target=target, dtype=dtype, max_seq_len=MAX_SEQ_LEN))
    before = [p for p in TARGETS[target].pass_modules() if p.NAME not in LOW_PRECISION]
    out, _ = apply(model, ctx, *before)
    return out, ctx


def inputs(cfg, model: ir.Model, windows: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    f = inplace_feeds(feeds(cfg, batch=1, seq=7, past=3), MAX_SEQ_LEN, windows=windows)
    f["logits_index"] = np.arange(7, dtype=np.int64)[None]
    caches = {v.name: v.dtype.numpy() for v in model.graph.inputs if v.name.startswith("past_")}
    return {k: v.astype(caches.get(k, v.dtype)) for k, v in f.items()}


def kinds(model: ir.Model, name: str) -> ir.DataType:
    return next(v for v in [*model.graph.inputs, *model.graph.outputs] if v.name == name).dtype


@pytest.mark.parametrize("target", ["ort-cpu", "onnx"])
def test_fp16_computes_in_fp16_with_fp32_logits(target, precision_checkpoints):
    model, ctx = fused(precision_checkpoints["peaked"], target, "fp16")
    low, (count,) = apply(model, ctx, precision)
    assert count > 0 and ctx.report["precision"]["compute"] == "fp16"
    assert kinds(low, "past_key.0") == ir.DataType.FLOAT16 and kinds(low, "logits") == ir.DataType.FLOAT
    assert ctx.report["precision"]["kept_fp32"] == {}  # nothing near fp16's limit here
    assert not [v for v in low.graph.initializers.values() if v.const_value.dtype == ir.DataType.FLOAT]
    windows = ring_windows(low, MAX_SEQ_LEN)  # onnx: the sliding layers' rings
    ours, ref = (run(m, inputs(ctx.config, m, windows))["logits"] for m in (low, model))
    np.testing.assert_allclose(ours, ref, atol=2e-2 * np.abs(ref).max())


def test_fp16_keeps_an_overflowing_residual_stream_in_fp32(precision_checkpoints, monkeypatch):
    model, ctx = fused(precision_checkpoints["huge_residual"], "ort-cpu", "fp16")
    low, _ = apply(model, ctx, precision)
    kept = ctx.report["precision"]["kept_fp32"]
    assert kept and max(kept.values()) > 65504  # measured, beyond fp16's range
    ref = run(model, inputs(ctx.config, model))["logits"]
    ours = run(low, inputs(ctx.config, low))["logits"]
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref, atol=2e-2 * np.abs(ref).max())
    monkeypatch.setattr(precision, "FP16_LIMIT", float("inf"))  # keep nothing: the same graph overflows
    plain, _ = apply(model, ctx, precision)
    assert not np.isfinite(run(plain, inputs(ctx.config, plain))["logits"]).all()


def test_bf16_on_the_cpu_is_bf16_storage_with_fp32_compute(precision_checkpoints):
    model, ctx = fused(precision_checkpoints["peaked"], "ort-cpu", "bf16")
    low, (count,) = apply(model, ctx, precision)
    assert count > 0 and ctx.report["precision"]["compute"] == "fp32"
    assert kinds(low, "past_key.0") == ir.DataType.FLOAT
    weights = [v for v in low.graph.initializers.values() if v.const_value.dtype == ir.DataType.BFLOAT16]
    assert weights and all(user.op_type == "Cast" for v in weights for user, _ in v.uses())
    ours, ref = run(low, inputs(ctx.config, low))["logits"], run(model, inputs(ctx.config, model))["logits"]
    np.testing.assert_allclose(ours, ref, atol=2e-2 * np.abs(ref).max())


def test_bf16_on_gpu_targets_computes_in_bf16(precision_checkpoints):
    model, ctx = fused(precision_checkpoints["peaked"], "ort-cuda", "bf16")
    low, _ = apply(model, ctx, precision)  # no bf16 kernels on this CPU: the graph is checked, not run
    assert ctx.report["precision"]["compute"] == "bf16"
    assert kinds(low, "past_key.0") == ir.DataType.BFLOAT16 and kinds(low, "logits") == ir.DataType.FLOAT
    gqa = [n for n in low.graph if n.op_type == "GroupQueryAttention"]
    assert gqa and all(n.inputs[0].dtype == ir.DataType.BFLOAT16 for n in gqa)
