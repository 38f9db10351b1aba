"""EmbeddingGemma (v1) from a sentence-transformers folder: the export's parity with
sentence-transformers per target and precision (with prompts, ragged batches and each Matryoshka
size), Model.embed, the `embed` CLI, and the folder's modules and fields each honoured or refused
by name."""

import json
import shutil

import numpy as np
import pytest

import gemma_runtime
from cli_util import cli
from gemma_export.checkpoints.sentence_transformers import open_sentence_transformers
from gemma_export.errors import GemmaExportError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.embedder import MAX_BATCH, batches
from gemma_runtime.errors import RuntimeInputError
from tiny_embedding import HIDDEN, PROMPTS

# ragged: 1 to ~20 tokens, the longer ones crossing the sliding window both ways
TEXTS = ["a", "abc ab", "a b c d e f g h i j", "srq ponm lkji hgfe", "ssss"]
GOALS = {"fp32": 0.99999, "fp16": 0.999}  # least cosine with sentence-transformers
SIZES = (None, 32, 16, 8)  # the tiny model's Matryoshka sizes (EmbeddingGemma: 768, 512, 256, 128)


@pytest.fixture(scope="module")
def reference(embedding_checkpoint):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_checkpoint), device="cpu")


def theirs(reference, prompt_name, dimensions):
    return reference.encode(TEXTS, prompt_name=prompt_name, truncate_dim=dimensions, normalize_embeddings=True)


@pytest.mark.parametrize("target", ["ort-cpu", "onnx"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_parity_with_sentence_transformers(embedding_artifacts, reference, target, dtype):
    model = gemma_runtime.load(embedding_artifacts(target, dtype))
    for prompt_name in (None, "query", "document"):
        for dimensions in SIZES:
            ours = model.embed(TEXTS, prompt_name=prompt_name, dimensions=dimensions)
            expected = theirs(reference, prompt_name, dimensions)
            assert ours.shape == expected.shape == (len(TEXTS), dimensions or HIDDEN)
            cosine = (ours * expected).sum(axis=1)
            assert cosine.min() >= GOALS[dtype], (prompt_name, dimensions, cosine)
            assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_manifest_and_fp16_report(embedding_artifacts):
    manifest = gemma_runtime.load(embedding_artifacts("ort-cpu", "fp16")).manifest
    assert manifest.embedding.dimensions == HIDDEN and manifest.embedding.prompts == PROMPTS
    assert (manifest.embedding.prefix_ids, manifest.embedding.suffix_ids) == ((2,), (1,))  # BOS ... EOS
    assert list(manifest.graphs) == ["embedding_head"] and manifest.kv_cache.buffers == ()
    assert manifest.kv_cache.max_seq_len == 64  # the folder's max_seq_length
    assert manifest.report["precision"]["dtype"] == "fp16"
    assert [m.rsplit(".", 1)[-1] for m in manifest.report["embedding"]["modules"]] == \
        ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]


def test_embed_inputs_and_refusals(embedding_artifacts):
    model = gemma_runtime.load(embedding_artifacts("ort-cpu", "fp32"))
    batch = model.embed(TEXTS)
    assert np.allclose(model.embed(TEXTS[2]), batch[2], atol=1e-6)  # one text alone = its row in a batch
    ids = model.embedder.token_ids(TEXTS[1])
    assert np.allclose(model.embed(ids), batch[1], atol=1e-6)  # token ids are used as given
    assert np.allclose(model.embed([ids, model.embedder.token_ids(TEXTS[0])]), batch[[1, 0]], atol=1e-6)
    for bad, message in [(dict(prompt_name="nope"), "unknown prompt name"), (dict(dimensions=0), "dimensions"),
                         (dict(dimensions=HIDDEN + 1), "dimensions")]:
        with pytest.raises(RuntimeInputError, match=message):
            model.embed(TEXTS, **bad)
    with pytest.raises(RuntimeInputError, match="text inputs, not token ids"):
        model.embed(ids, prompt_name="query")
    with pytest.raises(RuntimeInputError, match="maximum is 64"):
        model.embed("a" * 100)
    with pytest.raises(RuntimeInputError, match="embedding model"):
        model.generate("abc")
    with pytest.raises(RuntimeInputError, match="embedding model"):
        model.logits([2, 3])


def test_ragged_batches_group_by_length_and_keep_the_order(embedding_artifacts):
    lengths = [int(n) for n in np.random.default_rng(0).integers(3, 60, 70)]
    runs = batches(lengths)
    assert sorted(i for run in runs for i in run) == list(range(70)) and max(map(len, runs)) <= MAX_BATCH
    padded = sum(len(run) * max(lengths[i] for i in run) for run in runs)
    assert padded < 1.3 * sum(lengths) < 70 * max(lengths)  # one run padded to the longest would waste more
    model = gemma_runtime.load(embedding_artifacts("ort-cpu", "fp32"))
    texts = ["ab " * (n // 3) + "c" for n in lengths]
    together = model.embed(texts)
    assert np.allclose(together, np.stack([model.embed(t) for t in texts]), atol=1e-5)


def test_embed_cli(embedding_artifacts, reference, capsys):
    code, out, _ = cli(capsys, "embed", embedding_artifacts("ort-cpu", "fp32"), "--text", TEXTS[0], "--text", TEXTS[1],
                       "--prompt-name", "query", "--dimensions", "16")
    assert code == 0
    answer = json.loads(out)
    assert answer["dimensions"] == 16 and [d["text"] for d in answer["data"]] == TEXTS[:2]
    expected = theirs(reference, "query", 16)[:2]
    assert (np.asarray([d["embedding"] for d in answer["data"]]) * expected).sum(axis=1).min() >= GOALS["fp32"]
    code, _, err = cli(capsys, "embed", embedding_artifacts("ort-cpu", "fp32"), "--text", "a", "--prompt-name", "x")
    assert code == 2 and "unknown prompt name 'x'" in err


def test_inspect_describes_it_and_the_decoder_commands_refuse_it(embedding_artifacts, capsys):
    artifact = embedding_artifacts("ort-cpu", "fp32")
    code, out, _ = cli(capsys, "inspect", artifact)
    assert code == 0 and "gemma3 embedding model" in out and "embeddings" in out and "prompts: document, query" in out
    for command in (["validate", artifact], ["bench", artifact], ["generate", artifact, "--prompt", "a"]):
        code, _, err = cli(capsys, *command)
        assert code == 2 and "is an embedding model" in err, command


def test_targets_and_options_not_supported_yet(embedding_checkpoint, tmp_path):
    for options, message in [(dict(target="tensorrt"), "does not export embedding models yet"),
                             (dict(target="ort-cuda"), "does not export embedding models yet"),
                             (dict(quant="int8"), "not supported for embedding models yet"),
                             (dict(dtype="bf16"), "not supported for embedding models yet")]:
        with pytest.raises(GemmaExportError, match=message):
            export(embedding_checkpoint, tmp_path / "out", ExportOptions(**options))
    assert not (tmp_path / "out").exists()


# -- the folder: every module and field honoured or refused by name --------------------------------

def _edit(folder, tmp_path, file, change):
    copy = shutil.copytree(folder, tmp_path / "copy")
    path = copy / file
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(change(data)))
    return copy


def test_the_5x_layout_reads_the_same(embedding_checkpoint, tmp_path):
    """sentence-transformers 5.x (EmbeddingGemma's own files): sentence_transformers.models.X types,
    pooling_mode_*_tokens flags, max_seq_length in sentence_bert_config.json."""
    folder = _edit(embedding_checkpoint, tmp_path, "modules.json",
                   lambda mods: [{**m, "type": "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]}
                                 for m in mods])
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
         "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    for dense in ("2_Dense", "3_Dense"):
        config = json.loads((folder / dense / "config.json").read_text())
        for key in ("module_input_name", "module_output_name"):
            del config[key]
        (folder / dense / "config.json").write_text(json.dumps(config))
    shutil.rmtree(folder / "4_Normalize")  # empty in 5.x, so not in a hub's copy
    ours, new = open_sentence_transformers(folder), open_sentence_transformers(embedding_checkpoint)
    assert ours.config == new.config and ours.max_seq_length == 32 and ours.prompts == new.prompts


@pytest.mark.parametrize("file, change, message", [
    ("modules.json", lambda m: m[:2] + [{"idx": 2, "name": "2", "path": "2_Dense",
                                         "type": "sentence_transformers.models.LayerNorm"}] + m[2:],
     "sentence_transformers.models.LayerNorm"),
    ("modules.json", lambda m: m[:-1], "are not supported"),  # no Normalize
    ("modules.json", lambda m: [m[0], m[2], m[1], *m[3:]], "are not supported"),
    ("1_Pooling/config.json", lambda c: {**c, "pooling_mode": "cls"}, "pooling ['cls']"),
    ("1_Pooling/config.json", lambda c: {**c, "include_prompt": False}, "include_prompt"),
    ("2_Dense/config.json", lambda c: {**c, "activation_function": "torch.nn.modules.activation.Tanh"}, "Tanh"),
    ("2_Dense/config.json", lambda c: {**c, "out_features": 64}, "does not follow the previous width 64"),
    ("config_sentence_transformers.json", lambda c: {**c, "default_prompt_name": "other"}, "default_prompt_name"),
    ("config_sentence_transformers.json", lambda c: {**c, "truncate_dim": 16}, "truncate_dim"),
    ("sentence_bert_config.json", lambda c: {**c, "do_lower_case": True}, "do_lower_case"),
    ("config.json", lambda c: {**c, "use_bidirectional_attention": False}, "use_bidirectional_attention"),
])
def test_refused_by_name(embedding_checkpoint, tmp_path, file, change, message):
    with pytest.raises(GemmaExportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        open_sentence_transformers(_edit(embedding_checkpoint, tmp_path, file, change))


def test_a_bidirectional_body_alone_is_not_a_decoder(embedding_checkpoint, tmp_path):
    body = embedding_checkpoint.parent / f"{embedding_checkpoint.name}-body"  # a transformers folder
    with pytest.raises(GemmaExportError, match="export its sentence-transformers folder"):
        export(body, tmp_path / "out", ExportOptions())
