"""quantize_lookups: Gemma 4's per-layer embedding table and its expert tables, read only by
Gathers, are quantized in blocks along their last axis; the graph then computes what the fp32 graph
computes with those tables replaced by their quantized values."""

import numpy as np
import onnx_ir as ir
import pytest

from gemma_export.passes import quant_recipe, quantize_lookups, set_opset
from gemma_export.quantization import blocks, units
from gemma_export.targets import ExportOptions
from pass_harness import apply, feeds, op_types, run, traced
from tiny import write_checkpoint

CHECKPOINTS = {"per-layer": ("gemma4-shared", {}), "experts": ("gemma4-moe", {"moe_intermediate_size": 32})}


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lookups")
    return {kind: write_checkpoint(name, folder / kind, **overrides) for kind, (name, overrides) in CHECKPOINTS.items()}


def prepared(folder, options: ExportOptions):
    model, ctx = traced(folder, options)
    out, _ = apply(model, ctx, set_opset)
    return out, ctx


def graph_feeds(model: ir.Model, cfg) -> dict[str, np.ndarray]:
    """feeds() with each past cache shaped as the graph declares it (Gemma 4's head dims and KV
    heads differ by layer; KV-shared layers have none)."""
    f = feeds(cfg, past=2)
    rng = np.random.default_rng(1)
    inputs = {v.name: v for v in model.graph.inputs}
    for name in [n for n in f if n.startswith("past_")]:
        if name not in inputs:
            del f[name]
            continue
        _, heads, _, dim = inputs[name].shape
        f[name] = rng.standard_normal((2, heads, 2, dim)).astype(np.float32)
    return f


def tables(model: ir.Model, ctx) -> list[str]:
    return [u.name for u in units.units(model.graph, ctx) if not u.products]


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
@pytest.mark.parametrize("target,method", [("ort-cpu", "int4"), ("ort-cpu", "int8"), ("onnx", "int4")])
def test_lookups_read_the_quantized_tables(kind, target, method, gemma4):
    prepared_model, ctx = prepared(gemma4[kind], ExportOptions(target=target, quant=method))
    names = tables(prepared_model, ctx)
    assert names == (["model.embed_tokens_per_layer.weight"] if kind == "per-layer" else
                     [f"model.layers.{i}.experts.{p}" for i in range(4) for p in ("gate_up_proj", "down_proj")])
    quantized, (count,) = apply(prepared_model, ctx, quantize_lookups)
    assert count == len(names) and not set(names) & set(quantized.graph.initializers)
    if target == "ort-cpu":
        assert op_types(quantized).count("GatherBlockQuantized") == len(names)
    else:
        assert op_types(quantized).count("DequantizeLinear") == len(names)
    reference, _ = apply(prepared_model, None)
    for name in names:
        table = reference.graph.initializers[name]
        values = table.const_value.numpy()
        s = units.scheme_for(ctx, method, values.shape[-1])
        rows = values.reshape(-1, values.shape[-1])
        table.const_value = ir.tensor(blocks.dequantize(blocks.quantize(rows, s), s).reshape(values.shape))
    f = graph_feeds(prepared_model, ctx.config)
    ours, ref, fp32 = (run(m, f, optimize=False)["logits"] for m in (quantized, reference, prepared_model))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.abs(ours - fp32).max() > 100 * np.abs(ours - ref).max()


def test_float_tables_and_kept_embeddings_are_left(gemma4):
    model, ctx = prepared(gemma4["per-layer"], ExportOptions(target="ort-cpu", quant="int4", keep_embeddings_fp=True))
    assert tables(model, ctx) == []
    model, ctx = prepared(gemma4["experts"], ExportOptions(target="ort-cpu", quant="int4"))
    ctx.quant_plan = {name: "float" for name in tables(model, ctx)}
    kept, (count,) = apply(model, ctx, quantize_lookups)
    assert count == 0 and set(ctx.quant_plan) <= set(kept.graph.initializers)
    assert "GatherBlockQuantized" not in op_types(kept)


def test_a_table_no_block_fits_stays_float(tmp_path):
    """Expert down tables 24 wide (no power-of-two block >= 16 divides it) are not units: they stay
    float, and the gate/up tables (48 wide) quantize."""
    model, ctx = prepared(write_checkpoint("gemma4-moe", tmp_path / "narrow"), ExportOptions(target="ort-cpu",
                                                                                            quant="int4"))
    assert tables(model, ctx) == [f"model.layers.{i}.experts.gate_up_proj" for i in range(4)]
    quantized, (count,) = apply(model, ctx, quantize_lookups)
    kept = quantized.graph.initializers
    assert count == 4 and all(f"model.layers.{i}.experts.down_proj" in kept for i in range(4))
    assert not any(f"model.layers.{i}.experts.gate_up_proj" in kept for i in range(4))


def test_the_recipe_measures_each_table(gemma4):
    """The int4 recipe measures the tables like any unit (KL falling with width) and chooses a width
    for each within its budget."""
    from test_pass_precision import fused

    model, ctx = fused(gemma4["experts"], "ort-cpu", "fp32")
    ctx.options = ExportOptions(target="ort-cpu", quant="int4", dtype="fp32", max_seq_len=ctx.options.max_seq_len)
    apply(model, ctx, quant_recipe)
    kl = ctx.report["quantization"]["sensitivity"]["kl"]
    experts = [n for n in kl if ".experts." in n]
    assert len(experts) == 8
    assert all(kl[n]["int4"] > kl[n]["int8"] > kl[n]["float"] == 0 for n in experts)
    assert all(ctx.quant_plan[n] in ("int4", "int8", "float") for n in experts)
