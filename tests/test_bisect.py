"""validate --bisect (gemma_export/verify/pass_bisect.py): the export's passes run again from the
checkpoint, the graph checked against the torch reference layer by layer after each runnable group; a wrong
rewrite injected into one pass is named by group, layer and node."""

import json
import shutil

import pytest

from cli_util import cli
from gemma_export.checkpoints import open_source
from gemma_export.errors import GemmaExportError
from gemma_export.export import export, pass_context, resolve_options
from gemma_export.passes import fold_weight_transposes, geglu
from gemma_export.passes.pipeline import pipeline, run_pipeline, runnable_groups
from gemma_export.targets import TARGETS, ExportOptions
from gemma_export.tensors import mapped
from gemma_export.verify import pass_bisect, snapshot, walk
from gemma_export.verify.compare import FP32_RELATIVE_TOLERANCE
from gemma_export.verify.validate import token_ids

CONFIG = "gemma-mqa"  # three layers: a fault in layer 1 has a layer before and after it
OPTIONS = ExportOptions(max_seq_len=32)
LAYER_1 = "'model.layers.1'"  # in the torch module scope of the traced nodes of layer 1


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints[CONFIG]


@pytest.fixture(scope="module")
def artifact(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bisect") / "out"
    export(checkpoint, out, OPTIONS)
    return out


@pytest.fixture(scope="module")
def clean_walk(checkpoint, tmp_path_factory):
    source = open_source(checkpoint)
    ids = token_ids(None, source.config.bos_token_id, 32, None, source.config.vocab_size)[0]
    return pass_bisect.reexport(source, resolve_options(OPTIONS), ids, tmp_path_factory.mktemp("walk"))


def groups(checkpoint, options: ExportOptions) -> tuple[tuple[str, ...], ...]:
    """The runnable groups of the pipeline an export of checkpoint runs at these options."""
    options = resolve_options(options)
    return runnable_groups(pipeline(TARGETS[options.target], options, open_source(checkpoint).config))


def in_layer_1(node) -> bool:
    return LAYER_1 in node.metadata_props.get(snapshot.SCOPES, "")


def test_a_clean_export_stays_within_tolerance_at_every_group(clean_walk, checkpoint):
    points = clean_walk.points
    assert [p.group for p in points] == [walk.TRACED, *groups(checkpoint, OPTIONS)]
    assert clean_walk.finding is None
    ran = [p for p in points if p.status == "ok"]
    # every pass of the pipeline acts here, so no group leaves the graph unchanged
    assert {p.status for p in points} == {"ok"} and len(ran) >= 8
    for point in ran:
        assert len(point.layers) == 3 and all(d is not None for d in point.layers)  # every layer output followed
        assert all(d.relative <= FP32_RELATIVE_TOLERANCE for d in [*point.layers, point.logits])
    # groups that rewrite nothing at fp32 are not run again
    assert all(p.status == "unchanged" for p in points if p.group in [("activation_scaling",), ("precision",)])


def test_the_node_search_says_when_no_shared_value_differs(clean_walk):
    index = {p.group: i for i, p in enumerate(clean_walk.points)}
    result = clean_walk.node_search(index[("skip_rms_norm",)], index[("geglu",)], 1)
    assert result["found"] is False and result["compared"] > 5
    assert result["message"].startswith("no value of layer 1 that both graphs compute differs")
    assert result["node"]["op"] in ("Gelu", "Mul")  # the group's first new node in layer 1


def _gelu_reads_up(monkeypatch) -> dict:
    """geglu rewrites layer 1's GeGLU as Gelu(up) * up instead of Gelu(gate) * up."""
    wrong = {}
    run = geglu.run

    def faulty(model, ctx):
        gate, up = next(n for n in model.graph if n.op_type == "GemmaGeGLU" and in_layer_1(n)).inputs
        count = run(model, ctx)
        gelu = next(user for user, _ in gate.uses() if user.op_type == "Gelu")
        gelu.replace_input_with(0, up)
        wrong["node"] = gelu.name
        return count

    monkeypatch.setattr(geglu, "run", faulty)
    return wrong


def _down_proj_scaled(monkeypatch) -> dict:
    """fold_weight_transposes writes layer 1's down_proj weight 1.5x too large."""
    wrong = {}
    run = fold_weight_transposes.run

    def faulty(model, ctx):
        count = run(model, ctx)
        weight = model.graph.initializers["model.layers.1.mlp.down_proj.weight.T"]
        weight.const_value = mapped(weight.const_value, lambda rows: rows * 1.5, weight.name)
        wrong["node"] = next(user for user, _ in weight.uses()).name
        return count

    monkeypatch.setattr(fold_weight_transposes, "run", faulty)
    return wrong


@pytest.mark.parametrize("fault, group", [(_gelu_reads_up, "geglu"), (_down_proj_scaled, "fold_weight_transposes")])
def test_b_an_injected_fault_is_named_by_group_layer_and_node(fault, group, artifact, checkpoint, monkeypatch):
    wrong = fault(monkeypatch)
    report = pass_bisect.bisect(artifact, checkpoint)
    finding = report["first_divergence"]
    assert finding["group"] == [group] and finding["layer"] == 1
    assert finding["node_search"]["found"] and finding["node_search"]["node"]["name"] == wrong["node"]
    assert report["verdict"].startswith(f"first divergence: group {group}, layer 1, node {wrong['node']} (")
    by_group = {tuple(g["group"]): g for g in report["groups"]}
    layers = by_group[(group,)]["layers"]
    assert layers[0]["relative"] <= FP32_RELATIVE_TOLERANCE < layers[1]["relative"]
    assert report["artifact_logits"]["status"] == "ok"  # OUT itself was exported without the fault


def test_c_the_cli_prints_the_table_and_writes_json(artifact, checkpoint, tmp_path, capsys):
    (tmp_path / "one.txt").write_text("One prompt keeps validate's part short.\n")
    code, out, _ = cli(capsys, "validate", artifact, "--reference", checkpoint, "--text", tmp_path / "one.txt",
                       "--bisect", "--json", tmp_path / "r.json")
    assert code == 0, out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("group "))
    assert lines[header].split()[-4:] == ["0", "1", "2", "logits"]
    assert lines[header + 1].startswith("(traced)") and len(lines[header + 1].split()) == 1 + 1 + 4
    assert lines[-1] == "every group within tolerance"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["bisect"]["first_divergence"] is None
    assert len(report["bisect"]["groups"]) == len(groups(checkpoint, OPTIONS)) + 1
    assert all(len(g["layers"]) == 3 for g in report["bisect"]["groups"])


def test_bisect_refuses_an_artifact_as_reference(artifact, capsys):
    code, _, err = cli(capsys, "validate", artifact, "--reference", artifact, "--bisect")
    assert code == 2 and "is an artifact: pass that checkpoint" in err and len(err.strip().splitlines()) == 1


def test_bisect_asks_for_a_new_export_of_an_artifact_from_another_version(artifact, checkpoint, tmp_path):
    """An artifact whose config lacks a field this version has (the family's switches became
    fields) cannot be re-exported the same way: export it again, not 'another checkpoint'."""
    old = shutil.copytree(artifact, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["config"]["qk_norm"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GemmaExportError, match="another version of gemma-export.*export it again"):
        pass_bisect.bisect(old, checkpoint)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_targets_passes_keep_each_layer_output_marked(target, checkpoint):
    from gemma_export import export as export_module

    source = open_source(checkpoint)
    model = export_module.trace(source.config)
    snapshot.mark_layer_outputs(model.graph, source.config)
    options = resolve_options(ExportOptions(target=target, max_seq_len=32))
    marked = []

    def count(group, entries, model):
        marked.append(sorted(int(v.metadata_props[snapshot.LAYER_OUTPUT]) for n in model.graph for v in n.outputs
                             if snapshot.LAYER_OUTPUT in v.metadata_props))

    run_pipeline(model, pass_context(source.config, options, weights=source.weights), after_group=count)
    assert marked == [[0, 1, 2]] * len(groups(checkpoint, options))
