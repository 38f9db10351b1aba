"""The quantization recipe (gemma_export/quantization/recipe.py, the pass passes/quant_recipe.py) and
the sensitivities it chooses by (gemma_export/quantization/sensitivity.py)."""

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest

from gemma_export import ort_run
from gemma_export.errors import GemmaExportError
from gemma_export.quantization.float64_reference import DTYPE
from gemma_export.passes import quant_recipe, quantize_embedding, quantize_matmuls
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
    by_name = {u.name: u for u in units.units(model.graph, ctx)}
    rate = lambda n, w: (kl[n]["int4"] - kl[n][w]) / (units.unit_bytes(ctx, by_name[n], w)  # noqa: E731
                                                      - units.unit_bytes(ctx, by_name[n], "int4"))
    taken = min(rate(n, w) for n, w in ctx.quant_plan.items() if w != "int4")
    left = [n for n, w in ctx.quant_plan.items() if w == "int4"]
    room = budget * 2**20 - q["estimated_mib"] * 2**20
    fits = [n for n in left if units.unit_bytes(ctx, by_name[n], "int8")
            - units.unit_bytes(ctx, by_name[n], "int4") <= room]
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
