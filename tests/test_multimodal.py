"""The text decoder of multimodal checkpoints (Gemma3ForConditionalGeneration,
Gemma4ForConditionalGeneration as transformers saves them): exported from the detected prefix,
matching transformers' multimodal model on text-only input; the towers are skipped and said so;
their placeholder ids are refused in prompts."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import gemma_runtime
from cli_util import cli
from gemma_export.checkpoints import open_source
from gemma_export.errors import CheckpointError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.errors import RuntimeInputError
from parity import assert_fp32_parity, prompt, stepwise_logits
from tiny import PLACEHOLDERS, hf_multimodal_model, write_multimodal_checkpoint

FAMILIES = ["gemma3", "gemma4"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("multimodal")
    return {family: write_multimodal_checkpoint(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def artifacts(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("multimodal_artifacts")
    for family in FAMILIES:
        export(checkpoints[family], root / family, ExportOptions(max_seq_len=64))  # the default target
    return {family: root / family for family in FAMILIES}


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_text_decoder_matches_the_multimodal_model_on_text(family, artifacts):
    reference = hf_multimodal_model(family)
    model = gemma_runtime.load(artifacts[family], threads=1)
    ids = prompt(1, 40, vocab=370)  # no placeholder ids
    expected = _hf_logits(reference, ids)
    assert_fp32_parity(model.logits(ids), expected)
    assert_fp32_parity(stepwise_logits(model, ids[:30], prefill=5), expected[4:30])


@pytest.mark.parametrize("family", FAMILIES)
def test_towers_are_recorded_and_placeholders_refused(family, artifacts):
    model = gemma_runtime.load(artifacts[family], threads=1)
    multimodal = model.manifest.multimodal
    assert multimodal["model_type"] == family and multimodal["skipped"] == ["vision"]
    assert multimodal["placeholder_ids"] == PLACEHOLDERS[family]
    with pytest.raises(RuntimeInputError, match="380 is the image_token_(id|index) placeholder.*no vision encoder"):
        model.generate([2, 5, 380, 6], max_new_tokens=2)


def test_export_says_once_that_the_vision_tower_is_skipped(checkpoints, tmp_path, capsys):
    code, out, err = cli(capsys, "export", checkpoints["gemma4"], "-o", tmp_path / "out", "--max-seq-len", "32",
                         "--text-only")
    assert code == 0 and err.count("vision") == 1 and "skipped (--text-only)" in err


def _edited_copy(folder, dest, edit):
    """A copy of a checkpoint folder whose tensors `edit` changes in place (a dict)."""
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(dest / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dest / "model.safetensors"))
    return dest


def test_a_checkpoint_mixing_prefixes_is_refused(checkpoints, tmp_path):
    def move_one(tensors):
        tensors["model.language_model.norm.weight"] = tensors.pop("language_model.model.norm.weight")

    with pytest.raises(CheckpointError, match="two prefixes"):
        open_source(_edited_copy(checkpoints["gemma3"], tmp_path / "mixed", move_one))


def test_missing_text_weights_are_named(checkpoints, tmp_path):
    def drop_one(tensors):
        del tensors["model.language_model.layers.1.mlp.up_proj.weight"]

    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        open_source(_edited_copy(checkpoints["gemma4"], tmp_path / "missing", drop_one))
