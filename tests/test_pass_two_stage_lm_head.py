"""The two-stage lm_head (passes/two_stage_lm_head.py): an int4 scan, TopK candidates re-scored from
the stored rows with fp32 activations, scattered back into full logits."""

import dataclasses

import numpy as np
import pytest

from gemma_export.passes import quant_recipe, quantize_embedding, quantize_matmuls, two_stage_lm_head
from gemma_export.passes.context import LEFT_ALONE
from gemma_export.targets import ExportOptions
from pass_harness import apply, op_types, run
from test_pass_precision import fused, inputs

K = 16


def quantized(folder, quant="int8-uniform", target="ort-cpu", **options):
    """The fused graph through the recipe and the quantizers, with and without the two-stage head."""
    model, ctx = fused(folder, target, "fp32")
    ctx.options = dataclasses.replace(ctx.options, quant=quant, lm_head_candidates=K, **options)
    two_stage, counts = apply(model, ctx, quant_recipe, two_stage_lm_head, quantize_matmuls, quantize_embedding)
    report = ctx.report
    ctx.report = {}
    one_stage, _ = apply(model, ctx, quant_recipe, quantize_matmuls, quantize_embedding)
    return two_stage, one_stage, counts[1], report, ctx


@pytest.mark.parametrize("name", ["gemma3", "gemma2"])  # gemma2: the final softcap reads the scattered logits
def test_candidates_are_the_int8_head_with_fp32_activations(name, tiny_checkpoints, monkeypatch):
    """At accuracy level 0 (fp32 activations everywhere) the one-stage int8 head is the reference: the
    two-stage logits equal it at the k candidates (softcapped alike) and keep the int4 scan elsewhere;
    top-1 is the same at every position."""
    monkeypatch.setattr(quantize_matmuls, "ACCURACY_LEVEL", 0)
    two_stage, one_stage, count, report, ctx = quantized(tiny_checkpoints[name])
    assert count == 1 and {"TopK", "ScatterElements"} <= set(op_types(two_stage))
    lookups = [n for n in two_stage.graph if n.op_type == "GatherBlockQuantized"]
    assert len(lookups) == 2 and lookups[0].inputs[0] is lookups[1].inputs[0]  # one copy of the int8 rows
    assert report["two_stage_lm_head"]["candidates"] == K and report["two_stage_lm_head"]["rows"] == "int8"
    f = inputs(ctx.config, two_stage)
    ours, ref = (run(m, f, optimize=False)["logits"][0] for m in (two_stage, one_stage))
    top = np.argsort(-ours, axis=-1)[:, :K - 1]  # candidates (the lowest ties the tail capped at its score)
    np.testing.assert_allclose(np.take_along_axis(ours, top, -1), np.take_along_axis(ref, top, -1),
                               rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert (np.sort(top[:, :4], -1) == np.sort(np.argsort(-ref, axis=-1)[:, :4], -1)).all()  # top-k, k <= K
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(ours - ref).max() > 1e-3 * np.abs(ref).max()  # the tail is the scan's
    if ctx.config.final_softcap:  # the cap reads the scattered logits (equal values above: capped alike)
        assert "Tanh" in _downstream(two_stage, "lm_head.scattered")


def _downstream(model, name: str) -> list[str]:
    reached, ops = set(next(n for n in model.graph if n.name == name).outputs), []
    for node in model.graph:
        if any(v in reached for v in node.inputs):
            reached.update(node.outputs)
            ops.append(node.op_type)
    return ops


@pytest.mark.parametrize("options,reason", [
    ({"quant": "int4-uniform"}, "the table's planned width (int4) makes a scan stream no fewer bytes than the head"),
    ({"lm_head_candidates_at_vocab": True}, "candidates are not fewer than the"),
])
def test_left_alone_where_it_cannot_pay(options, reason, tiny_checkpoints):
    model, ctx = fused(tiny_checkpoints["gemma3"], "ort-cpu", "fp32")
    k = ctx.config.vocab_size if options.pop("lm_head_candidates_at_vocab", False) else K
    ctx.options = dataclasses.replace(ctx.options, **{"quant": "int8-uniform", **options}, lm_head_candidates=k)
    kept, (_, count) = apply(model, ctx, quant_recipe, two_stage_lm_head)
    assert count == 0 and "TopK" not in op_types(kept)
    (why,) = ctx.report["two_stage_lm_head"][LEFT_ALONE]
    assert reason in why


def test_acts_only_where_asked_and_the_target_can():
    cfg = None
    assert two_stage_lm_head.acts(_target("ort-cpu"), ExportOptions(quant="int8", dtype="fp32"), cfg)
    assert not two_stage_lm_head.acts(_target("ort-cpu"), ExportOptions(quant="int8", dtype="fp32",
                                                                         lm_head_candidates=0), cfg)
    assert not two_stage_lm_head.acts(_target("ort-cpu"), ExportOptions(quant="int8", dtype="fp32",
                                                                         keep_embeddings_fp=True), cfg)
    assert not two_stage_lm_head.acts(_target("ort-cpu"), ExportOptions(quant="none", dtype="fp32"), cfg)
    for name in ("onnx", "tensorrt", "ort-cuda"):
        assert not two_stage_lm_head.acts(_target(name), ExportOptions(quant="int8", dtype="fp32"), cfg)


def _target(name):
    from gemma_export.targets import TARGETS
    return TARGETS[name]
