"""Manifest format 5 (an artifact is a set of named graphs; the chat format recorded, and the
checkpoint's chat template where it ships one) and the older formats: a manifest written by this
code rewritten by hand to the version 4 form (no chat_template) loads as it was; to the version 3
and 2 forms (the decoder's inputs/outputs at the top level, no graphs, no chat format; version 2
without file hashes) it loads as one decoder graph and generates the same tokens; the chat format
comes from the tokenizer's turn pieces. Version 1 gets the one-line "export it again" error."""

import json
import shutil

import pytest

import gemma_runtime
from cli_util import cli
from gemma_export.chat_formats import CHAT_FORMATS
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import DECODER, INPUT_IDS, LOGITS
from gemma_runtime.manifest import DATA_FILE, FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE
from test_chat_tokens import gemma1_like_tokenizer

PROMPT = [2, 200, 210, 220]


@pytest.fixture(scope="module", params=["ort-cpu", "generic"])
def artifact(request, tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest-versions")
    folder = shutil.copytree(tiny_checkpoints["gemma-mqa"], root / "ckpt")
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    export(folder, root / "out", ExportOptions(target=request.param, max_seq_len=32))
    return root / "out"


def older(artifact, tmp_path, version: int):
    """A copy of the artifact whose manifest has the given version's form."""
    folder = shutil.copytree(artifact, tmp_path / f"v{version}")
    data = json.loads((folder / MANIFEST_FILE).read_text())
    del data["chat_template"], data["embedding"]
    if version == 4:
        data["format_version"] = 4
        (folder / MANIFEST_FILE).write_text(json.dumps(data))
        return folder
    decoder = data.pop("graphs")[DECODER]
    del data["chat"]
    data.update(format_version=version, inputs=decoder["inputs"], outputs=decoder["outputs"])
    if version < 3:
        del data["files"]
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    return folder


def test_the_manifest_lists_the_decoder_graph_and_the_chat_format(artifact):
    data = json.loads((artifact / MANIFEST_FILE).read_text())
    assert data["format_version"] == FORMAT_VERSION == 6 and data["embedding"] is None
    assert "inputs" not in data and "outputs" not in data
    assert data["chat_template"] is None  # this checkpoint ships none
    assert list(data["graphs"]) == [DECODER]
    decoder = data["graphs"][DECODER]
    assert (decoder["role"], decoder["file"], decoder["data_file"]) == (DECODER, MODEL_FILE, DATA_FILE)
    assert INPUT_IDS in decoder["inputs"] and LOGITS in decoder["outputs"]
    model = gemma_runtime.load(artifact)
    assert model.manifest.chat == CHAT_FORMATS["gemma"] and model.chat_format() == CHAT_FORMATS["gemma"]


@pytest.mark.parametrize("version", [2, 3])
def test_older_manifests_load_as_one_decoder_and_generate_the_same(artifact, tmp_path, version):
    expected = gemma_runtime.load(artifact).generate(PROMPT, max_new_tokens=6).token_ids
    model = gemma_runtime.load(older(artifact, tmp_path, version))
    assert model.manifest.format_version == version and model.manifest.chat is None
    assert model.manifest.decoder == gemma_runtime.load(artifact).manifest.decoder
    assert model.generate(PROMPT, max_new_tokens=6).token_ids == expected
    assert model.chat_format() == CHAT_FORMATS["gemma"]  # from <start_of_turn> and <end_of_turn>


def test_a_version_4_manifest_loads_as_it_was(artifact, tmp_path):
    model = gemma_runtime.load(older(artifact, tmp_path, 4))
    assert model.manifest.format_version == 4 and model.manifest.chat_template is None
    assert model.manifest.chat == CHAT_FORMATS["gemma"] and model.chat_template is None
    assert model.generate(PROMPT, max_new_tokens=6).token_ids == gemma_runtime.load(artifact).generate(
        PROMPT, max_new_tokens=6).token_ids


def test_version_1_is_refused_in_one_line(artifact, tmp_path, capsys):
    folder = older(artifact, tmp_path, 1)
    with pytest.raises(RuntimeInputError, match="format_version 1 is not supported .* export it again"):
        gemma_runtime.load(folder)
    code, _, err = cli(capsys, "generate", str(folder), "--prompt", "ab", "--max-new-tokens", "2")
    assert code == 2 and "export it again" in err and len(err.strip().splitlines()) == 1


def test_a_manifest_without_one_decoder_is_refused(artifact, tmp_path):
    folder = shutil.copytree(artifact, tmp_path / "two")
    data = json.loads((folder / MANIFEST_FILE).read_text())
    data["graphs"]["vision"] = {**data["graphs"][DECODER], "role": "vision_tower"}
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(RuntimeInputError, match=r"graphs with roles \['decoder', 'vision_tower'\]"):
        gemma_runtime.load(folder)
