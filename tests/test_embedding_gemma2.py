"""EmbeddingGemma 2 from its transformers folder: parity with transformers' EmbeddingGemma2Model
(mean pooling and L2 normalisation, as sentence-transformers wraps it) with each prompt and
Matryoshka size, its image tower skipped and named, and its config's fields honoured or refused."""

import json
import shutil

import numpy as np
import pytest
import torch

import gemma_runtime
from gemma_export.checkpoints.sentence_transformers import open_embedding_folder
from gemma_export.errors import GemmaExportError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from tiny_embedding import EG2_PROMPTS, EG2_TEXT, write_embedding_gemma2

# ragged, 3 to ~25 tokens: the longer ones cross the sliding radius of 3 both ways
TEXTS = ["a", "abc ab", "a b c d e f g h i j", "srq ponm lkji hgfe", "ssss"]
SIZES = (None, 32, 16, 8)
WIDTH = EG2_TEXT["embedding_dim"]
GOALS = {"fp32": 0.99999, "fp16": 0.999}  # least cosine with transformers


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_embedding_gemma2(tmp_path_factory.mktemp("eg2") / "hf")


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def artifact(folder, tmp_path_factory, request):
    out = tmp_path_factory.mktemp("eg2-artifact") / request.param
    export(folder, out, ExportOptions(dtype=request.param))
    return out


@pytest.fixture(scope="module")
def reference(folder):
    import transformers

    return (transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval(),
            transformers.AutoTokenizer.from_pretrained(folder))


def theirs(reference, prompt_name, dimensions):
    """transformers' model over the tokenizer's framing, mean-pooled over real tokens, cut, normalised."""
    model, tokenizer = reference
    batch = tokenizer([EG2_PROMPTS.get(prompt_name, "") + t for t in TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(tokens.dtype)
    pooled = ((tokens * mask).sum(1) / mask.sum(1)).numpy()[:, :dimensions]
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_parity_with_transformers(reference, artifact):
    model = gemma_runtime.load(artifact)
    for prompt_name in (None, "query", "document"):
        for dimensions in SIZES:
            ours = model.embed(TEXTS, prompt_name=prompt_name, dimensions=dimensions)
            expected = theirs(reference, prompt_name, dimensions)
            assert ours.shape == expected.shape == (len(TEXTS), dimensions or WIDTH)
            cosine = (ours * expected).sum(axis=1)
            assert cosine.min() >= GOALS[model.manifest.dtype], (prompt_name, dimensions, cosine)


def test_manifest_records_the_skipped_tower(artifact):
    manifest = gemma_runtime.load(artifact).manifest
    assert manifest.family == "embedding_gemma2" and manifest.embedding.dimensions == WIDTH
    assert manifest.embedding.prompts == EG2_PROMPTS and manifest.embedding.prefix_ids == (2,)
    assert manifest.report["embedding"]["skipped_towers"] == ["vision"]
    assert manifest.config["text"]["sliding_window"] == 2 * EG2_TEXT["sliding_window"]  # the radius, as a width


def _edit(folder, tmp_path, change):
    copy = shutil.copytree(folder, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    change(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("change, message", [
    (lambda c: c["text_config"].update(attention_k_eq_v=True), "attention_k_eq_v"),
    (lambda c: c["text_config"].update(hidden_activation="gelu"), "hidden_activation"),
    (lambda c: c["text_config"]["rope_parameters"]["full_attention"].update(rope_type="linear", factor=2.0),
     "RoPE scaling"),
    (lambda c: c.update(text_config={**c["text_config"], "model_type": "gemma4_text"}), "embedding_gemma2_text"),
    (lambda c: c.update(video_config={}), "video_config"),
])
def test_config_refused_by_name(folder, tmp_path, change, message):
    with pytest.raises(GemmaExportError, match=message):
        open_embedding_folder(_edit(folder, tmp_path, change))
