"""Pipelines (gemma_export/passes/pipeline.py): a target's pipeline at given options holds only the
passes that act there, in an order that keeps what every pass declares (AFTER, REQUIRES,
UNRUNNABLE_UNTIL), and the runnable groups `validate --bisect` checks come from those declarations."""

import dataclasses
import importlib
from types import SimpleNamespace

import pytest

from conftest import REPO
from gemma_export.checkpoints import open_source
from gemma_export.export import resolve_options
from gemma_export.passes.context import LEFT_ALONE
from gemma_export.passes.pipeline import PipelineOrderError, pipeline, run_pipeline, runnable_groups
from gemma_export.targets import LOW_PRECISION, TARGETS, ExportOptions
from gemma_graphs.roles import roles
from pass_harness import apply, traced

DECLARATIONS = ("AFTER", "REQUIRES", "UNRUNNABLE_UNTIL")
PASS_NAMES = sorted(p.stem for p in (REPO / "gemma_export" / "passes").glob("*.py")
                    if p.read_text().count("\nNAME = "))
# (dtype, quant, calibrate): fp32 none, fp16, int4-uniform, the int8 recipe with --calibrate
MIXES = [("fp32", "none", False), ("fp16", "none", False), ("fp32", "int4-uniform", False), ("fp32", "int8", True)]
# Where a pass of the quantization package may rewrite nothing at run time, and why (their bodies
# record nothing in the report): the int8 recipe may keep the tied table float.
EXPLAINED_ZEROS = {"quantize_embedding": lambda ctx: ctx.quant_plan.get(roles(ctx.config).embedding, "float") == "float"}


def options(target: str, dtype: str | None = None, quant: str = "none", calibrate: bool = False) -> ExportOptions:
    return resolve_options(ExportOptions(target=target, dtype=dtype, quant=quant, calibrate=calibrate, max_seq_len=32))


def allowed(target: str) -> list[tuple[str, str, bool]]:
    t = TARGETS[target]
    return [m for m in MIXES if m[0] in t.dtypes and m[1] in t.quants] or [(t.dtypes[0], "none", False)]


def names(passes) -> list[str]:
    return [p.NAME for p in passes]


@pytest.fixture(scope="module")
def gemma3(tiny_checkpoints):
    return open_source(tiny_checkpoints["gemma3"]).config


def test_every_declared_pass_exists():
    for name in PASS_NAMES:
        module = importlib.import_module(f"gemma_export.passes.{name}")
        for declaration in DECLARATIONS:
            assert set(getattr(module, declaration, ())) <= set(PASS_NAMES), (name, declaration)


@pytest.mark.parametrize("target", TARGETS)
def test_a_default_export_runs_no_low_precision_pass(target, gemma3):
    t = TARGETS[target]
    built = names(pipeline(t, options(target), gemma3))
    assert built == [p for p in t.passes if p in built]
    assert [p for p in built if p in LOW_PRECISION] == ([] if t.dtypes[0] == "fp32" else ["precision"])  # ort-cuda: fp16


def test_options_bring_in_exactly_their_passes(gemma3):
    t = TARGETS["onnx"]
    low = {mix: [p for p in names(pipeline(t, options("onnx", *mix), gemma3)) if p in LOW_PRECISION] for mix in MIXES}
    assert low == {("fp32", "none", False): [],
                   ("fp16", "none", False): ["precision"],
                   ("fp32", "int4-uniform", False): ["quant_recipe", "quantize_matmuls", "quantize_embedding"],
                   ("fp32", "int8", True): ["activation_scaling", "quant_recipe", "quantize_matmuls",
                                            "quantize_embedding"]}
    kept = options("onnx", quant="int4-uniform")
    kept = dataclasses.replace(kept, keep_embeddings_fp=True)
    assert "quantize_embedding" not in names(pipeline(t, kept, gemma3))


@pytest.mark.parametrize("target", TARGETS)
def test_every_pass_that_runs_on_tiny_gemma3_rewrites_or_says_why_not(target, tiny_checkpoints):
    for mix in allowed(target):
        model, ctx = traced(tiny_checkpoints["gemma3"], options(target, *mix))
        for entry in run_pipeline(model, ctx):
            name = entry["name"]
            explained = ctx.report.get(name, {}).get(LEFT_ALONE) or name in EXPLAINED_ZEROS and EXPLAINED_ZEROS[name](ctx)
            assert entry["rewrites"] > 0 or explained, (target, mix, name)


@pytest.mark.parametrize("config", ["gemma2", "gemma4-shared"])
def test_a_pass_left_out_would_have_rewritten_nothing(config, tmp_path):
    """The whole list run on softcaps (gemma2) and on KV sharing, weightless norms and per-layer
    tables (Gemma 4): every pass the pipeline leaves out rewrites nothing there."""
    from tiny import write_checkpoint

    checkpoint = write_checkpoint(config, tmp_path / config)
    for target in TARGETS:
        # unquantized mixes: with --quant every quantizer acts (and int4 refuses Gemma 4's 8-wide per-layer inputs)
        for mix in [m for m in allowed(target) if m[1] == "none"]:
            model, ctx = traced(checkpoint, options(target, *mix))
            built = names(pipeline(ctx.target, ctx.options, ctx.config))
            _, counts = apply(model, ctx, *ctx.target.pass_modules())
            left_out = {name: n for name, n in zip(ctx.target.passes, counts) if name not in built}
            left_out.pop("set_opset", None)  # only version numbers: needed where standard ops arrive (below)
            left_out.pop("inline_functions", None)  # generic inlines only where --inline-functions asks
            assert not any(left_out.values()), (target, mix, left_out)


def test_set_opset_runs_before_a_fused_attention_only_where_a_layer_keeps_the_standard_form(tiny_checkpoints,
                                                                                           tmp_path):
    from tiny import write_checkpoint

    shared = open_source(write_checkpoint("gemma4-shared", tmp_path / "shared")).config
    plain = open_source(tiny_checkpoints["gemma3"]).config
    ort = TARGETS["ort-cpu"]
    assert names(pipeline(ort, options("ort-cpu"), shared))[:1] == ["set_opset"]  # KV-shared layers
    assert "set_opset" not in names(pipeline(ort, options("ort-cpu"), plain))  # every layer fuses
    assert names(pipeline(TARGETS["onnx"], options("onnx"), plain))[:1] == ["set_opset"]


# The groups of every target's whole list: the graph runs after every pass except between
# inplace_cache_io and the attention lowering.
LOW = [(p,) for p in LOW_PRECISION if p != "two_stage_lm_head"]  # ort-cpu's alone
LOW_ORT_CPU = [(p,) for p in LOW_PRECISION]
GROUPS = {
    "ort-cpu": [("set_opset",), ("tied_lm_head",), ("fold_weight_transposes",), ("logits_index",),
                ("inplace_cache_io", "attention_gqa"), ("constant_view_shapes",), ("rms_norm",), ("skip_rms_norm",),
                ("geglu",), ("pack_matmuls",), ("drop_project_domain",), *LOW_ORT_CPU, ("split_lm_head",)],
    "ort-cuda": [("set_opset",), ("tied_lm_head",), ("fold_weight_transposes",), ("logits_index",),
                 ("inplace_cache_io", "attention_gqa"), ("constant_view_shapes",), ("rms_norm",), ("skip_rms_norm",),
                 ("geglu",), ("pack_matmuls",), ("drop_project_domain",), *LOW],
    "onnx": [("set_opset",), ("tied_lm_head",), ("fold_weight_transposes",), ("logits_index",),
             ("inplace_cache_io", "rms_normalization", "rotary_embedding", "geglu", "attention_onnx"),
             ("drop_project_domain",), *LOW, ("split_lm_head",)],
    "tensorrt": [("set_opset",), ("tied_lm_head",), ("fold_weight_transposes",), ("logits_index",),
                 ("inplace_cache_io", "rms_normalization", "rotary_embedding", "geglu", "attention_onnx"),
                 ("drop_project_domain",), *LOW, ("attention_tensorrt",), ("constant_axes",)],
    "generic": [("tied_lm_head",), ("fold_weight_transposes",), ("inline_functions",)],
    "openvino": [("set_opset",), ("tied_lm_head",), ("fold_weight_transposes",), ("inline_functions",),
                 *(p for p in LOW if p != ("precision",))],
}


@pytest.mark.parametrize("target", TARGETS)
def test_runnable_groups_of_every_target(target, gemma3):
    t = TARGETS[target]
    assert list(runnable_groups(t.pass_modules())) == GROUPS[target]
    for mix in allowed(target):  # a built pipeline's groups: those groups less the passes left out
        built = pipeline(t, options(target, *mix), gemma3)
        expected = [g for g in (tuple(p for p in group if p in names(built)) for group in GROUPS[target]) if g]
        assert list(runnable_groups(built)) == expected


def fake(name: str, **declarations) -> SimpleNamespace:
    return SimpleNamespace(NAME=name, **declarations)


def test_runnable_groups_join_passes_until_the_graph_runs_again():
    passes = [fake("a"), fake("io", UNRUNNABLE_UNTIL=("x", "y")), fake("b"), fake("y"), fake("c")]
    assert runnable_groups(passes) == (("a",), ("io", "b", "y"), ("c",))


def reordered(target: str, name: str, before: str):
    """The target with pass `name` moved just before pass `before`."""
    t = TARGETS[target]
    passes = [p for p in t.passes if p != name]
    passes.insert(passes.index(before), name)
    return dataclasses.replace(t, passes=tuple(passes))


@pytest.mark.parametrize("target, name, before, message", [
    ("ort-cpu", "pack_matmuls", "attention_gqa", "pack_matmuls must run after attention_gqa, not before it"),
    ("ort-cpu", "skip_rms_norm", "rms_norm", "skip_rms_norm must run after rms_norm, not before it"),
    ("tensorrt", "attention_tensorrt", "precision", "attention_tensorrt must run after precision, not before it"),
    ("onnx", "rms_normalization", "logits_index", "rms_normalization must run after logits_index, not before it"),
    ("onnx", "drop_project_domain", "attention_onnx", "drop_project_domain must run after attention_onnx"),
])
def test_a_wrong_order_is_an_error_naming_both_passes(target, name, before, message, gemma3):
    with pytest.raises(PipelineOrderError, match=message):
        pipeline(reordered(target, name, before), options(target, dtype="fp16"), gemma3)


def test_a_missing_requirement_and_a_graph_that_never_runs_again_are_errors(gemma3):
    onnx = TARGETS["onnx"]
    without_io = dataclasses.replace(onnx, passes=tuple(p for p in onnx.passes if p != "inplace_cache_io"))
    with pytest.raises(PipelineOrderError, match="attention_onnx requires inplace_cache_io, which is not in the pipeline"):
        pipeline(without_io, options("onnx"), gemma3)
    cut = dataclasses.replace(onnx, passes=onnx.passes[:onnx.passes.index("inplace_cache_io") + 1])
    with pytest.raises(PipelineOrderError, match="never runs again after inplace_cache_io"):
        pipeline(cut, options("onnx"), gemma3)
    twice = dataclasses.replace(onnx, passes=(*onnx.passes, "geglu"))
    with pytest.raises(PipelineOrderError, match="geglu is in the pipeline twice"):
        pipeline(twice, options("onnx"), gemma3)


def test_the_manifest_and_dump_ir_list_the_passes_that_ran(tiny_checkpoints, tmp_path):
    from gemma_export.export import export

    manifest = export(tiny_checkpoints["gemma3"], tmp_path / "out", ExportOptions(max_seq_len=32),
                      dump_ir=tmp_path / "ir")
    ran = [p["name"] for p in manifest.passes]
    assert ran == names(pipeline(TARGETS["ort-cpu"], options("ort-cpu"), open_source(tiny_checkpoints["gemma3"]).config))
    assert not set(ran) & set(LOW_PRECISION) and all(p["rewrites"] > 0 for p in manifest.passes)
    dumped = sorted(f.name for f in (tmp_path / "ir").iterdir())
    assert dumped == ["00-traced.txt", *(f"{i:02d}-{name}.txt" for i, name in enumerate(ran, start=1))]
