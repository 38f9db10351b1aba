"""Multimodal checkpoints (Gemma3ForConditionalGeneration, Gemma4ForConditionalGeneration as
transformers saves them): by default the decoder takes the image encoder's rows at its placeholders
and the encoder is a graph of the artifact; on every target the logits of a prompt with two images
match transformers' multimodal model, whole and token by token after the images, and greedy tokens
equal its generate. --text-only keeps the token-id decoder; bad media and checkpoints are refused."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import gemma_runtime
from cli_util import cli
from gemma_export.checkpoints import open_source
from gemma_export.errors import CheckpointError, ConfigError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.media.prompt import MediaPrompt, MediaSpan
from media_util import greedy_after, stepwise_after_media
from parity import assert_fp32_parity, prompt
from tiny import PLACEHOLDERS, hf_multimodal_model, two_image_prompt, write_multimodal_checkpoint

FAMILIES = ["gemma3", "gemma4"]
MAX_SEQ_LEN = 256
# (family, target, dtype): the fp32 path of every target that takes media, and fp16 on ort-cuda's
# graph (run on the CPU provider).
# Gemma 4 on the targets whose attention differs for it (GroupQueryAttention beside the standard
# form; ring caches); tensorrt and generic share the onnx and traced attention Gemma 3 checks.
CASES = [("gemma3", t, "fp32") for t in ("ort-cpu", "onnx", "tensorrt", "generic")] + \
        [("gemma4", t, "fp32") for t in ("ort-cpu", "onnx")] + [(f, "ort-cuda", "fp16") for f in FAMILIES]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("multimodal")
    return {family: write_multimodal_checkpoint(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def artifacts(checkpoints, tmp_path_factory):
    root, made = tmp_path_factory.mktemp("multimodal_artifacts"), {}

    def artifact(family: str, target: str, dtype: str = "fp32"):
        key = (family, target, dtype)
        if key not in made:
            made[key] = root / "-".join(key)
            export(checkpoints[family], made[key], ExportOptions(target=target, dtype=dtype, max_seq_len=MAX_SEQ_LEN))
        return made[key]
    return artifact


@pytest.fixture(scope="module")
def two_images():
    """Per family: the prompt's ids, the processor's arrays (as transformers' processor returns them),
    the reference's logits of the prompt and its greedy continuation, and the top-1 agreement of
    transformers' own model in fp16 with them."""
    rng = np.random.default_rng(0)
    cases = {}
    for family in FAMILIES:
        ids, arrays = two_image_prompt(family, rng)
        reference = hf_multimodal_model(family)
        inputs = {k: torch.tensor(v) for k, v in arrays.items()}
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([ids]), **inputs).logits[0].float().numpy()
            greedy = reference.generate(input_ids=torch.tensor([ids]), **inputs, max_new_tokens=6, do_sample=False)
            in_fp16 = reference.half()(input_ids=torch.tensor([ids]), **inputs).logits[0].float().numpy()
        cases[family] = ids, arrays, logits, greedy[0, len(ids):].tolist(), top1(in_fp16, logits)
    return cases


def top1(logits: np.ndarray, expected: np.ndarray) -> float:
    return float((logits.argmax(-1) == expected.argmax(-1)).mean())


@pytest.mark.parametrize("family,target,dtype", CASES)
def test_two_images_match_transformers(family, target, dtype, artifacts, two_images):
    ids, arrays, expected, greedy, fp16_top1 = two_images[family]
    model = gemma_runtime.load(artifacts(family, target, dtype), threads=1,
                               **({"device": "cpu"} if target == "ort-cuda" else {}))
    got = model.logits(ids, **arrays)
    if dtype == "fp16":
        # fp16 tower and decoder: no overflow, and top-1 agreement >= 99%, or where transformers' own
        # fp16 model agrees less (the tiny Gemma 4 turns fp16 rounding of its image rows into
        # flips: 90.9% there), no less than it does.
        assert model.manifest.report["encoders"]["image_encoder"]["precision"]["compute"] == "fp16"
        assert np.isfinite(got).all() and top1(got, expected) >= min(0.99, fp16_top1)
        return
    assert_fp32_parity(got, expected)
    media = model.media_prompt(ids, arrays)
    assert greedy_after(model, ids, media, len(greedy)) == greedy
    if target in ("ort-cpu", "onnx"):  # the prompt up to the last image, then token by token
        assert_fp32_parity(stepwise_after_media(model, ids, media), expected[media.spans[-1].end - 1:])


def test_the_manifest_describes_the_image_encoder(artifacts):
    manifest = gemma_runtime.load(artifacts("gemma4", "ort-cpu"), threads=1).manifest
    encoder = manifest.graphs["image_encoder"]
    assert encoder.file == "image_encoder.onnx" and list(encoder.inputs) == ["pixel_values", "image_position_ids"]
    assert list(encoder.outputs) == ["soft_tokens", "soft_token_mask"]
    image = manifest.multimodal["image"]
    assert (image["kind"], image["token_id"], image["bidirectional"]) == ("gemma4", 380, True)
    assert image["processing"]["max_soft_tokens"] == 70 and manifest.multimodal["skipped"] == []
    assert manifest.config["media_inputs"] and "lookahead" in manifest.decoder.inputs


def test_an_image_is_never_split_across_calls():
    media = MediaPrompt([MediaSpan(3, np.zeros((4, 2)), True), MediaSpan(9, np.zeros((2, 2)), False)])
    assert media.cut(0, 5) == 3  # back to the image's start
    assert media.cut(3, 5) == 7  # an image that starts the call goes whole
    assert media.cut(0, 10) == 10  # audio may be split
    splice = media.splice(2, 10)
    assert splice.columns.tolist() == [1, 2, 3, 4, 7] and splice.lookahead.tolist() == [3, 2, 1, 0, 0]


def test_text_only_keeps_the_token_id_decoder(checkpoints, tmp_path):
    manifest = export(checkpoints["gemma4"], tmp_path / "text", ExportOptions(max_seq_len=64, text_only=True))
    assert list(manifest.graphs) == ["decoder"] and "spliced_embeds" not in manifest.decoder.inputs
    assert manifest.multimodal["skipped"] == ["vision"] and "image" not in manifest.multimodal
    model = gemma_runtime.load(tmp_path / "text", threads=1)
    ids = prompt(1, 40, vocab=370)  # no placeholder ids
    with torch.no_grad():
        expected = hf_multimodal_model("gemma4")(torch.tensor([ids])).logits[0].float().numpy()
    assert_fp32_parity(model.logits(ids), expected)
    with pytest.raises(RuntimeInputError, match="380 is the image_token_id placeholder"):
        model.generate([2, 5, 380, 6], max_new_tokens=2)
    with pytest.raises(RuntimeInputError, match="no pixel_values"):
        model.logits([2, 5, 6], pixel_values=np.zeros((1, 48, 48), np.float32))


def test_bad_media_is_refused(artifacts, two_images):
    model = gemma_runtime.load(artifacts("gemma3", "ort-cpu"), threads=1)
    ids, arrays, _, _, _ = two_images["gemma3"]
    with pytest.raises(RuntimeInputError, match="placeholder"):  # ids typed without the media
        model.logits(ids)
    with pytest.raises(RuntimeInputError, match="1 image placeholder run"):  # two images, one placeholder run
        model.logits(ids[:10] + [9, 10], pixel_values=arrays["pixel_values"])
    with pytest.raises(RuntimeInputError, match="do not mark exactly the image tokens"):
        model.logits(ids, pixel_values=arrays["pixel_values"], token_type_ids=np.zeros((1, len(ids)), np.int64))
    with pytest.raises(RuntimeInputError, match="take no input_features"):
        model.logits([2, 5], input_features=np.zeros((1, 8, 128), np.float32))


def _edited_copy(folder, dest, edit=None, config=None):
    """A copy of a checkpoint folder whose tensors `edit` changes in place (a dict), or whose
    config.json `config` rewrites."""
    import json
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    if edit is not None:
        tensors = load_file(str(dest / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(dest / "model.safetensors"))
    if config is not None:
        raw = json.loads((dest / "config.json").read_text())
        config(raw)
        (dest / "config.json").write_text(json.dumps(raw))
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


def test_bad_towers_are_refused_by_name(checkpoints, tmp_path):
    def unknown_tower(raw):
        raw["vision_config"]["model_type"] = "clip_vision_model"

    with pytest.raises(ConfigError, match="clip_vision_model"):
        open_source(_edited_copy(checkpoints["gemma3"], tmp_path / "clip", config=unknown_tower))

    def drop_encoder_weight(tensors):
        del tensors["model.embed_vision.embedding_projection.weight"]

    with pytest.raises(CheckpointError, match="embed_vision.embedding_projection.weight.*missing"):
        export(_edited_copy(checkpoints["gemma4"], tmp_path / "no-embedder", drop_encoder_weight), tmp_path / "a",
               ExportOptions(max_seq_len=64))

    def stray(tensors):
        tensors["model.vision_tower.extra.weight"] = torch.zeros(2)

    with pytest.raises(CheckpointError, match="no exported graph reads.*vision_tower.extra.weight"):
        export(_edited_copy(checkpoints["gemma4"], tmp_path / "stray", stray), tmp_path / "b",
               ExportOptions(max_seq_len=64))
    folder = _edited_copy(checkpoints["gemma3"], tmp_path / "no-processor")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="--text-only"):
        export(folder, tmp_path / "c", ExportOptions(max_seq_len=64))
    assert not (tmp_path / "c").exists()


def test_an_audio_clip_and_an_image_match_transformers(tmp_path):
    """Gemma 4 E-style checkpoint (an audio tower beside the vision one): a prompt with two clips of
    different lengths (padding) and an image, on the default target."""
    from tiny_audio import audio_prompt, hf_audio_model, write_audio_checkpoint

    export(write_audio_checkpoint(tmp_path / "ck"), tmp_path / "a", ExportOptions(max_seq_len=MAX_SEQ_LEN))
    model = gemma_runtime.load(tmp_path / "a", threads=1)
    assert model.manifest.multimodal["audio"]["token_id"] == PLACEHOLDERS["gemma4"]["audio_token_id"]
    ids, arrays = audio_prompt(np.random.default_rng(1))
    with torch.no_grad():
        expected = hf_audio_model()(input_ids=torch.tensor([ids]),
                                    **{k: torch.tensor(v) for k, v in arrays.items()}).logits[0].float().numpy()
    assert_fp32_parity(model.logits(ids, **arrays), expected)


def test_tensorrt_rtx_builds_the_decoder_and_encoder_engines(artifacts, tmp_path):
    """Gemma 3's fp32 graphs; the fp16 graphs of Gemma 4's vision and audio encoders (lowered by the
    precision rules) and its media decoder: build-engine builds an engine of each, ahead of time."""
    import json
    import shutil

    from gemma_export.emit import tensorrt_engine
    from tiny_audio import write_audio_checkpoint

    audio = tmp_path / "audio-fp16"
    export(write_audio_checkpoint(tmp_path / "ck"), audio, ExportOptions(target="tensorrt", dtype="fp16",
                                                                         max_seq_len=MAX_SEQ_LEN))
    shutil.copytree(artifacts("gemma3", "tensorrt"), tmp_path / "gemma3")
    for folder, encoders in ((tmp_path / "gemma3", ["image_encoder"]), (audio, ["image_encoder", "audio_encoder"])):
        entry = tensorrt_engine.build(folder, max_batch=2, compute_capability="8.9", max_media_items=2)
        engines = json.loads((folder / "manifest.json").read_text())["engines"]
        assert [e.get("graph") for e in engines] == [None, *encoders] and engines[0] == entry
        assert all((folder / e["file"]).stat().st_size > 0 for e in engines)


def test_export_says_once_that_the_vision_tower_is_skipped(checkpoints, tmp_path, capsys):
    code, out, err = cli(capsys, "export", checkpoints["gemma4"], "-o", tmp_path / "out", "--max-seq-len", "32",
                         "--text-only")
    assert code == 0 and err.count("vision") == 1 and "skipped (--text-only)" in err
