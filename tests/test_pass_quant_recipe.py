"""The quantization recipe (gemma_export/quantization/recipe.py, the pass passes/quant_recipe.py) and
the sensitivities it chooses by (gemma_export/quantization/sensitivity.py)."""

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest

from gemma_export import ort_run
from gemma_export.errors import GemmaExportError
from gemma_export.quantization.float64_reference import DTYPE
from gemma_export.passes import (quant_recipe, quantize_embedding, quantize_lookups, quantize_matmuls,
                                  two_stage_lm_head)
from gemma_export.quantization import blocks, sensitivity
from gemma_export.quantization import units
from gemma_graphs.roles import roles
from gemma_runtime import interface
from pass_harness import apply, run
from test_pass_precision import fused


def with_options(ctx, **changes):
    ctx.options = dataclasses.replace(ctx.options, **changes)
    return ctx


def recipe(checkpoint, target="ort-cpu", **options):
    model, ctx = fused(checkpoint, target, "fp32")
    with_options(ctx, **options)
    _, (count,) = apply(model, ctx, quant_recipe)
    return model, ctx, count


def test_uniform_gives_every_weight_one_width(precision_checkpoints):
    _, ctx, count = recipe(precision_checkpoints["peaked"], quant="int4-uniform")
    assert count == 4 * ctx.config.num_layers + 1  # q/k/v, o, gate/up, down; the embedding
    assert set(ctx.quant_plan.values()) == {"int4"} and "sensitivity" not in ctx.report["quantization"]


def test_budget_buys_the_most_kl_per_byte_and_stays_within_it(precision_checkpoints):
    model, ctx, _ = recipe(precision_checkpoints["peaked"], quant="int4")
    default = ctx.report["quantization"]
    smallest, fp32 = default["all_narrowest_mib"], default["fp32_mib"]
    budget = (smallest + 0.4 * (fp32 - smallest) / 4)  # room for some upgrades, not all
    _, ctx, _ = recipe(precision_checkpoints["peaked"], quant="int4", max_size_mib=budget)
    q = ctx.report["quantization"]
    widths = set(ctx.quant_plan.values())
    assert "int4" in widths and widths != {"int4"}
    assert q["estimated_mib"] <= budget + 0.01
    kl = q["sensitivity"]["kl"]
    for name, by_width in kl.items():
        assert by_width["int4"] >= by_width["int8"] >= by_width["float"] == 0.0
    # every unit left at int4 would have saved less KL per byte than the cheapest upgrade taken
    assert q["estimated_streamed_mib"] <= budget + 0.01
    # every unit left at int4 would have saved less KL per byte than the cheapest upgrade taken (a
    # step's bytes: the larger of what it adds to the files and to the stream)
    by_name = {u.name: u for u in units.units(model.graph, ctx)}
    added = lambda n, w: units.unit_bytes(ctx, by_name[n], w) - units.unit_bytes(ctx, by_name[n], "int4")  # noqa: E731
    rate = lambda n, w: (kl[n]["int4"] - kl[n][w]) / max(added(n, w).file, added(n, w).streamed)  # noqa: E731
    largest = roles(ctx.config).embedding  # tried at each width, not by the greedy's rate
    greedy = {n: w for n, w in ctx.quant_plan.items() if n != largest}
    taken = min(rate(n, w) for n, w in greedy.items() if w != "int4")
    left = [n for n, w in greedy.items() if w == "int4"]
    room = budget * 2**20 - max(q["estimated_mib"], q["estimated_streamed_mib"]) * 2**20
    fits = [n for n in left if max(added(n, "int8").file, added(n, "int8").streamed) <= room]
    assert all(rate(n, "int8") <= taken for n in fits)


def test_choices_do_not_depend_on_the_thread_count(precision_checkpoints):
    import torch

    plans, threads = [], torch.get_num_threads()
    try:
        for cores in (1, 2):
            torch.set_num_threads(cores)
            _, ctx, _ = recipe(precision_checkpoints["peaked"], quant="int4", max_size_mib=0.5)
            plans.append((ctx.quant_plan, ctx.report["quantization"]["sensitivity"]["kl"]))
    finally:
        torch.set_num_threads(threads)
    assert plans[0] == plans[1]


def test_a_budget_below_the_all_int4_size_is_refused(precision_checkpoints):
    with pytest.raises(GemmaExportError, match="below the all-int4 size"):
        recipe(precision_checkpoints["peaked"], quant="int4", max_size_mib=0.001)


@pytest.mark.parametrize("target", ["tensorrt", "ort-cpu"])
def test_measured_kl_is_the_kl_of_the_real_quantized_graph(precision_checkpoints, target):
    """Each of two units (the embedding, a layer's product) quantized alone through the real
    quantizers and kernels (MatMulNBits with int8 activations on ort-cpu; DequantizeLinear, fp32
    activations, on tensorrt) moves the logits by the KL the recipe measured."""
    model, ctx, _ = recipe(precision_checkpoints["peaked"], target, quant="int4")
    kl = ctx.report["quantization"]["sensitivity"]["kl"]
    names = [u.name for u in units.units(model.graph, ctx)]
    sequences = sensitivity._sequences(ctx)
    fp32 = [run(model, _feeds(model, ids))["logits"][0] for ids in sequences]
    for name in (roles(ctx.config).embedding, names[1]):
        ctx.quant_plan = {n: "int4" if n == name else "float" for n in names}
        quantized, _ = apply(model, ctx, quantize_matmuls, quantize_embedding)
        ours = [run(quantized, _feeds(model, ids), optimize=target != "tensorrt")["logits"][0] for ids in sequences]
        positions = sum(len(r) for r in fp32)
        measured = sum(_kl(r, o) for r, o in zip(fp32, ours)) / positions
        tolerance = 0.02 if target == "tensorrt" else 0.3  # emulated activation rounding vs the kernel's
        assert measured == pytest.approx(kl[name]["int4"], rel=tolerance), name


def _feeds(model, ids):
    f = ort_run.prefill_feeds(model.graph, ids)
    f[interface.LOGITS_INDEX] = np.arange(0, len(ids), sensitivity.POSITION_STRIDE, dtype=np.int64)[None]
    return f


def _kl(ref: np.ndarray, ours: np.ndarray) -> float:
    def log_softmax(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    p, q = log_softmax(ref), log_softmax(ours)
    return float((np.exp(p) * (p - q)).sum())


@pytest.mark.parametrize("target,quant", [("ort-cpu", "int4-uniform"), ("ort-cpu", "int8-uniform"),
                                          ("onnx", "int4-uniform"), ("tensorrt", "int8-uniform")])
def test_byte_model_is_the_emitted_initializers(precision_checkpoints, target, quant):
    """Each unit's file bytes in the recipe's byte model are exactly the initializers the quantizers
    leave for it (ort-cpu int8: the tied table read in two stages, its int4 scan included)."""
    model, ctx, _ = recipe(precision_checkpoints["peaked"], target, quant=quant)
    found = units.units(model.graph, ctx)
    done, _ = apply(model, ctx, two_stage_lm_head, quantize_matmuls, quantize_embedding, quantize_lookups)
    two_stage = "candidates" in ctx.report.get("two_stage_lm_head", {})
    assert two_stage == (target == "ort-cpu" and quant == "int8-uniform")
    for unit in found:
        emitted = sum(v.const_value.nbytes for name, v in done.graph.initializers.items()
                      if name.startswith(unit.name + ".") and v.dtype != ir.DataType.INT64)
        assert units.unit_bytes(ctx, unit, ctx.quant_plan[unit.name]).file == emitted, unit.name


def test_byte_model_of_a_table_only_looked_up(tmp_path):
    """Gemma 4's per-layer table at int4 on ort-cpu: GatherBlockQuantized's zero points, a byte a
    block, and no packed copy; it streams nothing per step but the rows it gathers."""
    from tiny import write_checkpoint

    from gemma_export.passes import set_opset
    from gemma_export.targets import ExportOptions
    from pass_harness import traced

    model, ctx = traced(write_checkpoint("gemma4-shared", tmp_path / "ple"),
                        ExportOptions(target="ort-cpu", quant="int4-uniform"))
    table = roles(ctx.config).per_layer_table
    done, _ = apply(model, ctx, set_opset, quant_recipe, quantize_lookups)  # its products' K of 8 has no block
    unit = next(u for u in units.units(model.graph, ctx) if u.name == table)
    emitted = sum(v.const_value.nbytes for name, v in done.graph.initializers.items()
                  if name.startswith(table + ".") and v.dtype != ir.DataType.INT64)
    assert units.unit_bytes(ctx, unit, "int4") == blocks.Bytes(emitted, 0)


def test_streamed_bytes_are_the_prepacked_blocks():
    """At blocks of 32 MatMulNBits' prepacked int8 streams 10 bits a weight and int4 6 (the files: 9 and
    5.125 + a packed zero point)."""
    int8, int4 = blocks.scheme(8, 32), blocks.scheme(4, 32)
    assert blocks.streamed_bytes(64, 256, int8, 4, prepacked=True) * 8 == 64 * 256 * 10
    assert blocks.streamed_bytes(64, 256, int4, 4, prepacked=True) * 8 == 64 * 256 * 6
    assert blocks.stored_bytes(64, 256, int8, 4) * 8 == 64 * 256 * 9
    assert blocks.streamed_bytes(64, 256, int4, 4, prepacked=False) == blocks.stored_bytes(64, 256, int4, 4)


def test_stored_bytes_match_the_written_tensors():
    s = blocks.for_matrix(blocks.scheme(4, 32), 128)
    rows = ir.tensor(np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32))
    tensors = blocks.nbits_tensors(rows, s, "w")
    assert blocks.stored_bytes(8, 128, s, 4) == sum(t.nbytes for t in tensors if t is not None)


def test_the_expert_router_stays_float_and_is_measured_nowhere(tmp_path):
    """Gemma 4's router chooses experts: the recipe keeps it float (its weight is also too small to
    be fed as a memory-mapped input, which once made the sensitivity run fail on its name)."""
    from tiny import write_checkpoint

    model, ctx = fused(write_checkpoint("gemma4-moe", tmp_path / "moe", moe_intermediate_size=32), "ort-cpu", "fp32")
    with_options(ctx, quant="int4")
    routers = [v.name for v in model.graph.initializers.values() if ".router." in v.name and v.shape.rank() == 2]
    assert routers
    apply(model, ctx, quant_recipe, quantize_matmuls)
    assert not set(routers) & set(ctx.quant_plan)
    assert all(model.graph.initializers[name].dtype == ir.DataType.FLOAT for name in routers)
    assert set(ctx.quant_plan.values()) <= {"int4", "int8", "float"} and ctx.quant_plan


def test_mixture_of_experts_calibration_runs_in_pieces_within_the_gather_budget(monkeypatch, tmp_path):
    """A routed prefill holds n x top_k experts' weights: the sensitivity run feeds pieces short
    enough to stay within GATHER_BUDGET, the same tokens in all."""
    from tiny import write_checkpoint

    model, ctx = fused(write_checkpoint("gemma4-moe", tmp_path / "moe", moe_intermediate_size=32), "ort-cpu", "fp32")
    whole = sensitivity._sequences(ctx)
    cfg = ctx.config
    per_token = cfg.top_k_experts * 3 * cfg.hidden_size * cfg.moe_intermediate_size * DTYPE.itemsize  # float64
    monkeypatch.setattr(sensitivity, "GATHER_BUDGET", 20 * per_token)
    pieces = sensitivity._sequences(ctx)
    assert max(map(len, pieces)) == 20 < max(map(len, whole))
    assert all(p[0] == cfg.bos_token_id for p in pieces)  # each piece starts as a text does
    ids = list(range(5, 50))
    split = sensitivity._split(ids, 20, 2)
    assert [len(p) for p in split] == [20, 20, 7] and split[0] == ids[:20]
    assert split[0] + sum((p[1:] for p in split[1:] if p[0] == 2), []) == ids


def test_a_given_plan_is_replayed_without_measuring(precision_checkpoints, monkeypatch):
    """A plan given in (ctx.quant_plan set, as validate --bisect does from a manifest) is the plan:
    nothing is measured; one that names other weights than the graph's is refused."""
    model, ctx, count = recipe(precision_checkpoints["peaked"], quant="int4", max_size_mib=0.5)
    measured = dict(ctx.quant_plan)
    assert set(measured.values()) != {"int4"}  # the recipe chose: a plan worth replaying

    def no_measuring(*args):
        raise AssertionError("a given plan was measured again")

    monkeypatch.setattr(sensitivity, "measure", no_measuring)
    ctx.report = {}
    _, (replayed,) = apply(model, ctx, quant_recipe)
    assert replayed == count and ctx.quant_plan == measured
    assert ctx.report["quantization"] == {"recipe": "int4", "replayed": True, "choices": measured}
    ctx.quant_plan = {**measured, "not.a.weight": "int4"}
    with pytest.raises(GemmaExportError, match="does not match this graph's weights"):
        apply(model, ctx, quant_recipe)


def test_the_default_budget_holds_for_the_artifact_folder(precision_checkpoints, tmp_path):
    """`du` of the int4 recipe's folder (weights and the copied tokenizer; the graph and the manifest
    aside, whose size the recipe cannot know) within the default fraction of the fp32 folder's."""
    from gemma_export.export import export
    from gemma_export.targets import DEFAULT_BUDGET, ExportOptions
    from test_chat_tokens import with_tokenizer

    source = with_tokenizer(precision_checkpoints["peaked"], tmp_path / "ckpt")
    sizes = {}
    for quant in ("none", "int4"):
        export(source, tmp_path / quant, ExportOptions(target="ort-cpu", quant=quant))
        sizes[quant] = sum(f.stat().st_size for f in (tmp_path / quant).iterdir()
                           if f.name not in ("model.onnx", "manifest.json"))
    assert (tmp_path / "int4" / "tokenizer.model").is_file()
    assert sizes["int4"] <= DEFAULT_BUDGET["int4"] * sizes["none"]
