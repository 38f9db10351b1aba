"""Gemma 4 Unified (Gemma4UnifiedForConditionalGeneration, the encoder-free model, as transformers
saves it): by default its patch and audio-frame embedders are graphs of the artifact and the decoder
takes their rows at the placeholders; the logits of a prompt with two images and an audio clip
match transformers' model on the targets (whole, and token by token after the media), greedy tokens
equal its generate; the runtime's preprocessing gives transformers' arrays; --text-only keeps the
token-id decoder; bad checkpoints are refused by name."""

import types

import numpy as np
import pytest
import torch
from PIL import Image

import gemma_runtime
from gemma_export.checkpoints import open_source
from gemma_export.errors import CheckpointError, ConfigError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.media import gemma4_images, gemma4_unified_audio
from parity import assert_fp32_parity, prompt
from media_util import greedy_after, stepwise_after_media
from test_multimodal import _edited_copy
from tiny_unified import (IMAGE_BUDGET, SAMPLES_PER_TOKEN, hf_feature_extractor, hf_unified_model,
                          image_and_audio_prompt, reference_functions, reference_image_arrays,
                          write_unified_checkpoint)

MAX_SEQ_LEN = 256
TARGETS = ["ort-cpu", "onnx", "tensorrt", "generic"]  # tensorrt: its graph run by onnxruntime


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny checkpoint with a tokenizer that has Gemma 4's media pieces at its placeholder ids."""
    from media_util import MEDIA_PIECES
    from test_chat_tokens import gemma1_like_tokenizer

    folder = write_unified_checkpoint(tmp_path_factory.mktemp("unified") / "ck")
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer(MEDIA_PIECES["gemma4"]))
    return folder


@pytest.fixture(scope="module")
def artifacts(checkpoint, tmp_path_factory):
    root, made = tmp_path_factory.mktemp("unified_artifacts"), {}

    def artifact(target: str):
        if target not in made:
            made[target] = root / target
            export(checkpoint, made[target], ExportOptions(target=target, max_seq_len=MAX_SEQ_LEN))
        return made[target]
    return artifact


@pytest.fixture(scope="module")
def media_prompt():
    """The prompt's ids, its arrays and the reference's logits and greedy continuation."""
    ids, arrays = image_and_audio_prompt(np.random.default_rng(0))
    reference = hf_unified_model()
    inputs = {k: torch.tensor(v) for k, v in arrays.items()}
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids]), **inputs).logits[0].float().numpy()
        greedy = reference.generate(input_ids=torch.tensor([ids]), **inputs, max_new_tokens=6, do_sample=False)
    return ids, arrays, logits, greedy[0, len(ids):].tolist()


@pytest.mark.parametrize("target", TARGETS)
def test_two_images_and_a_clip_match_transformers(target, artifacts, media_prompt):
    ids, arrays, expected, greedy = media_prompt
    model = gemma_runtime.load(artifacts(target), threads=1)
    assert_fp32_parity(model.logits(ids, **arrays), expected)
    media = model.media_prompt(ids, arrays)
    assert [s.bidirectional for s in media.spans] == [True, False, True]  # image, clip, image
    assert greedy_after(model, ids, media, len(greedy)) == greedy
    if target != "generic":  # the prompt up to the last image, then token by token
        assert_fp32_parity(stepwise_after_media(model, ids, media), expected[media.spans[-1].end - 1:])


def test_generate_prepares_images_and_audio_as_transformers_does(artifacts):
    """A text prompt with two images and a clip: the runtime's preprocessing and expansion, then its
    greedy tokens, against transformers' model on the reference arrays of the same media."""
    from tiny import PLACEHOLDERS, placeholder_ids

    model = gemma_runtime.load(artifacts("ort-cpu"), threads=1)
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((60, 40), (30, 50))]
    clip = rng.standard_normal(150).astype(np.float32) * 0.1
    text = "<|image|> and <|audio|> then <|image|>"
    ids, _ = model.prepare(text, images, [clip])
    pixels, positions, counts = reference_image_arrays(images)
    audio = hf_feature_extractor()([clip], sampling_rate=16000, return_tensors="np")
    image, boi, eoi = placeholder_ids("gemma4")
    ph = PLACEHOLDERS["gemma4"]
    runs = [[boi, *[image] * counts[0], eoi], [ph["boa_token_id"], *[ph["audio_token_id"]] * 10, ph["eoa_token_index"]],
            [boi, *[image] * counts[1], eoi]]
    start = 0
    for run in runs:  # in order, each whole
        start = ids.index(run[0], start)
        assert ids[start:start + len(run)] == run
        start += len(run)
    assert ids.count(image) == sum(counts) and ids.count(ph["audio_token_id"]) == 10
    arrays = {"pixel_values": pixels, "image_position_ids": positions, **audio,
              "mm_token_type_ids": np.array([[1 if i == image else 3 if i == ph["audio_token_id"] else 0 for i in ids]])}
    with torch.no_grad():
        want = hf_unified_model().generate(input_ids=torch.tensor([ids]), **{k: torch.tensor(v) for k, v in arrays.items()},
                                           max_new_tokens=4, do_sample=False)[0, len(ids):].tolist()
    # A generated placeholder id is embedded as the pad token by transformers, as itself by the
    # runtime: the comparison needs a continuation without one (this seed's).
    assert not set(want) & set(PLACEHOLDERS["gemma4"].values())
    got = model.generate(text, images=images, audio=[clip], max_new_tokens=4)
    assert got.prompt_tokens == len(ids) and got.token_ids == want[:len(got.token_ids)]
    assert len(got.token_ids) == 4 or got.finish_reason == "stop"


def test_an_image_sees_itself_on_every_layer(artifacts, media_prompt):
    """The prompt is longer than the window and each image's block decides its logits: transformers
    without the image blocks (no mm_token_type_ids), or with them on sliding layers only (Gemma 4's
    masks), is far from ours."""
    from transformers.models.gemma4_unified import modeling_gemma4_unified as hf

    ids, arrays, expected, _ = media_prompt
    model = gemma_runtime.load(artifacts("ort-cpu"), threads=1)
    assert model.manifest.config["media_blocks"] == "all" and len(ids) > model.manifest.config["sliding_window"]
    got = model.logits(ids, **arrays)
    reference = hf_unified_model()
    inputs = {k: torch.tensor(v) for k, v in arrays.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        causal = reference(input_ids=torch.tensor([ids]), **inputs).logits[0].numpy()
        blocks = hf.get_block_sequence_ids_for_mask(torch.tensor(arrays["mm_token_type_ids"]), "cpu")
        masks = hf.create_masks_for_vision_model(  # transformers' Gemma 4 masks: image blocks on sliding layers
            config=reference.config.text_config, inputs_embeds=torch.zeros(1, len(ids), 48), attention_mask=None,
            cache=None, position_ids=torch.arange(len(ids))[None], block_sequence_ids=blocks)
        sliding_only = reference(input_ids=torch.tensor([ids]), attention_mask=masks, **inputs).logits[0].numpy()
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-4 * scale
    assert np.abs(causal - expected).max() > 1e-2 * scale and np.abs(sliding_only - expected).max() > 1e-2 * scale


def test_tensorrt_rtx_builds_an_engine_of_each_graph(artifacts, tmp_path):
    import json
    import shutil

    from gemma_export.emit import tensorrt_engine

    folder = tmp_path / "trt"
    shutil.copytree(artifacts("tensorrt"), folder)
    tensorrt_engine.build(folder, compute_capability="8.9")  # parses every node of each graph, or raises
    engines = json.loads((folder / "manifest.json").read_text())["engines"]
    assert [e.get("graph") for e in engines] == [None, "image_encoder", "audio_encoder"]


def test_the_manifest_describes_the_embedders(artifacts):
    manifest = gemma_runtime.load(artifacts("ort-cpu"), threads=1).manifest
    assert manifest.family == "gemma4_unified" and manifest.multimodal["skipped"] == []
    assert list(manifest.graphs["image_encoder"].inputs) == ["pixel_values", "image_position_ids"]
    assert list(manifest.graphs["audio_encoder"].inputs) == ["input_features", "input_features_mask"]
    image, audio = manifest.multimodal["image"], manifest.multimodal["audio"]
    assert (image["kind"], image["token_id"], image["bidirectional"]) == ("gemma4_unified", 380, True)
    assert image["processing"]["max_soft_tokens"] == IMAGE_BUDGET
    assert audio["kind"] == "gemma4_unified" and audio["processing"]["samples_per_token"] == SAMPLES_PER_TOKEN


@pytest.mark.parametrize("size", [(40, 60), (50, 30), (17, 90), (300, 200), (8, 8), (120, 7)])
def test_images_are_prepared_as_transformers_prepares_them(size, checkpoint):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    settings = gemma4_images.Gemma4ImageProcessing(patch_size=4, max_soft_tokens=IMAGE_BUDGET, pooling_kernel_size=2)
    pixels, positions, counts = gemma4_images.preprocess([image], settings, merged=True)
    want_pixels, want_positions, want_counts = reference_image_arrays([image])
    size_rule = reference_functions()["get_aspect_ratio_preserving_size"]
    height, width = size_rule(height=size[1], width=size[0], patch_size=4, max_patches=IMAGE_BUDGET * 4,
                              pooling_kernel_size=2)
    assert gemma4_images.target_size(*size, settings) == (width, height)
    assert counts == want_counts == [width * height // 64]
    assert np.array_equal(positions, want_positions) and np.array_equal(pixels, want_pixels)


def test_audio_is_cut_into_frames_as_transformers_cuts_it():
    from transformers import Gemma4UnifiedProcessor

    rng = np.random.default_rng(5)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (150, 1, 16, 17, 48)]
    settings = gemma4_unified_audio.Gemma4UnifiedAudioProcessing(samples_per_token=SAMPLES_PER_TOKEN)
    features, mask = gemma4_unified_audio.frames(clips, settings)
    want = hf_feature_extractor()(clips, sampling_rate=16000, return_tensors="np")
    assert np.array_equal(features, want["input_features"]) and np.array_equal(mask, want["input_features_mask"])
    processor = types.SimpleNamespace(feature_extractor=hf_feature_extractor())  # what the count reads
    counts = [Gemma4UnifiedProcessor._compute_audio_num_tokens(processor, clip, 16000) for clip in clips]
    assert [int(row.sum()) for row in mask] == counts == [10, 1, 1, 2, 3]
    assert [gemma4_unified_audio.soft_tokens(len(c), settings) for c in clips] == counts


def test_text_only_keeps_the_token_id_decoder(checkpoint, tmp_path):
    manifest = export(checkpoint, tmp_path / "text", ExportOptions(max_seq_len=64, text_only=True))
    assert list(manifest.graphs) == ["decoder"] and "spliced_embeds" not in manifest.decoder.inputs
    assert manifest.multimodal["skipped"] == ["vision", "audio"]
    ids = prompt(2, 60, vocab=370)  # no placeholder ids; longer than the window
    with torch.no_grad():
        expected = hf_unified_model()(torch.tensor([ids])).logits[0].float().numpy()
    assert_fp32_parity(gemma_runtime.load(tmp_path / "text", threads=1).logits(ids), expected)


@pytest.mark.parametrize("field,value,message", [
    ("hidden_size_per_layer_input", 8, "unknown or unsupported config field.*hidden_size_per_layer_input"),
    ("enable_moe_block", True, "unknown or unsupported config field.*enable_moe_block"),
    ("use_bidirectional_attention", "all", "use_bidirectional_attention = 'all' is not supported"),
    ("attention_bias", True, "attention_bias = True is not supported"),
])
def test_bad_text_configs_are_refused_by_name(checkpoint, tmp_path, field, value, message):
    def edit(raw):
        raw["text_config"][field] = value

    with pytest.raises(ConfigError, match=message):
        open_source(_edited_copy(checkpoint, tmp_path / "bad", config=edit))


def test_a_missing_or_stray_tensor_and_a_long_image_budget_are_refused(checkpoint, tmp_path):
    def drop(tensors):
        del tensors["model.vision_embedder.pos_embedding"]

    with pytest.raises(CheckpointError, match="vision_embedder.pos_embedding.*missing"):
        export(_edited_copy(checkpoint, tmp_path / "missing", drop), tmp_path / "a", ExportOptions(max_seq_len=64))

    def stray(tensors):
        tensors["model.embed_audio.extra.weight"] = torch.zeros(2)

    with pytest.raises(CheckpointError, match="no exported graph reads.*embed_audio.extra.weight"):
        export(_edited_copy(checkpoint, tmp_path / "stray", stray), tmp_path / "b", ExportOptions(max_seq_len=64))

    def narrow_window(raw):
        raw["text_config"]["sliding_window"] = 64

    with pytest.raises(CheckpointError, match="max_soft_tokens 70 exceeds the decoder's sliding window 64"):
        export(_edited_copy(checkpoint, tmp_path / "window", config=narrow_window), tmp_path / "c",
               ExportOptions(max_seq_len=64))
    assert not any((tmp_path / name).exists() for name in "abc")
