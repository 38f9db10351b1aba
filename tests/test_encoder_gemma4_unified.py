"""Gemma 4 Unified's patch and audio-frame embedders (gemma_graphs.encoders.gemma4_unified) against
transformers' Gemma4UnifiedForConditionalGeneration, loaded by name from the saved checkpoint; their
strict config parsers; each kind's meta-device ONNX trace (gemma_export.towers) run by onnxruntime.

The image inputs are laid out as Gemma4UnifiedImageProcessor lays them out (merged patches in
row-major order, (x, y) positions, padding rows of zeros at (-1, -1)); the processor itself needs
torchvision, see tests/tiny_unified.py and test_unified.py for the arrays."""

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
from safetensors.torch import load_file

from gemma_export.checkpoints.hf_gemma4_unified import parse_gemma4_unified_audio, parse_gemma4_unified_vision
from gemma_export.errors import ConfigError
from gemma_export.ort_run import cpu_session
from gemma_export.towers import Encoder, trace_encoder
from gemma_export.verify.compare import Diff
from gemma_graphs.encoders.gemma4_unified import (Gemma4UnifiedAudioConfig, Gemma4UnifiedAudioEmbedder,
                                                  Gemma4UnifiedImageEmbedder, Gemma4UnifiedVisionConfig)
from tiny_unified import hf_unified_model

torch.set_num_threads(1)
TOLERANCE = 1e-5  # max |diff| / max |reference|
GRIDS = ((5, 3), (2, 6))  # (width, height) of each image in model patches


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = hf_unified_model()
    folder = tmp_path_factory.mktemp("gemma4_unified")
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def _raw(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def _load(module: torch.nn.Module, folder) -> torch.nn.Module:
    saved = {k.removeprefix("model."): v for k, v in load_file(folder / "model.safetensors").items()}
    module.load_state_dict({k: saved[k] for k, _ in module.named_parameters()}, strict=True)
    return module.eval()


def _image_embedder(folder) -> Gemma4UnifiedImageEmbedder:
    raw = _raw(folder)
    return _load(Gemma4UnifiedImageEmbedder(parse_gemma4_unified_vision(raw["vision_config"],
                                                                         raw["text_config"]["hidden_size"])), folder)


def _audio_embedder(folder) -> Gemma4UnifiedAudioEmbedder:
    return _load(Gemma4UnifiedAudioEmbedder(parse_gemma4_unified_audio(_raw(folder)["audio_config"], 48)), folder)


def _images(cfg: Gemma4UnifiedVisionConfig, slots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(len(GRIDS), slots, cfg.patch_pixels)
    positions = torch.full((len(GRIDS), slots, 2), -1, dtype=torch.int64)
    for i, (w, h) in enumerate(GRIDS):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        positions[i, : w * h] = torch.stack([xs.flatten(), ys.flatten()], dim=-1)
        pixels[i, : w * h] = torch.rand(w * h, cfg.patch_pixels, generator=gen)
    return pixels, positions


def _clips(frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clips of 16-sample frames, the second shorter (its padding frames zero)."""
    mask = torch.arange(frames)[None] < torch.tensor([[frames], [frames - 3]])
    return torch.randn(2, frames, 16, generator=torch.Generator().manual_seed(seed)) * 0.3 * mask[..., None], mask


def test_saved_config_parses(checkpoint):
    raw = _raw(checkpoint[1])
    vision = parse_gemma4_unified_vision(raw["vision_config"], 48)
    assert vision == Gemma4UnifiedVisionConfig(patch_size=4, pooling_kernel_size=2, mm_embed_dim=40, mm_posemb_size=16,
                                               rms_norm_eps=1e-6, text_hidden_size=48)
    assert vision.patch_pixels == 3 * 8 * 8
    assert Gemma4UnifiedVisionConfig.from_dict(vision.to_dict()) == vision
    audio = parse_gemma4_unified_audio(raw["audio_config"], 48)
    assert audio == Gemma4UnifiedAudioConfig(audio_embed_dim=16, rms_norm_eps=1e-6, text_hidden_size=48)
    assert Gemma4UnifiedAudioConfig.from_dict(audio.to_dict()) == audio


@pytest.mark.parametrize("section,change,message", [
    ("vision_config", {"output_proj_dims": 48}, "output_proj_dims = 48 differs from mm_embed_dim = 40"),
    ("vision_config", {"model_type": "gemma4_vision"}, "model_type = 'gemma4_vision' is not supported"),
    ("vision_config", {"mm_posemb_size": 0}, "mm_posemb_size = 0 must be a positive integer"),
    ("vision_config", {"hidden_size": 40}, "unknown or unsupported config field.*hidden_size"),
    ("audio_config", {"audio_embed_dim": "640"}, "'audio_embed_dim' = '640' has an unsupported type"),
    ("audio_config", {"subsampling": 4}, "unknown or unsupported config field.*subsampling"),
])
def test_refusals_name_the_field(checkpoint, section, change, message):
    parse = parse_gemma4_unified_vision if section == "vision_config" else parse_gemma4_unified_audio
    with pytest.raises(ConfigError, match=message):
        parse({**_raw(checkpoint[1])[section], **change}, 48, where=section)


def test_image_soft_tokens_match_transformers(checkpoint):
    model, folder = checkpoint
    embedder = _image_embedder(folder)
    pixels, positions = _images(embedder.config, 20, seed=0)
    with torch.no_grad():
        reference = model.model.get_image_features(pixels, positions, return_dict=True).pooler_output
        tokens, mask = embedder(pixels, positions)
    assert tokens.shape == (2, 20, 48)
    for i, (w, h) in enumerate(GRIDS):
        assert mask[i].tolist() == [True] * (w * h) + [False] * (20 - w * h)
        assert Diff.of(tokens[i][mask[i]].numpy(), reference[i].numpy()).relative < TOLERANCE


def test_audio_soft_tokens_match_transformers(checkpoint):
    model, folder = checkpoint
    frames, mask = _clips(7, seed=3)
    with torch.no_grad():
        reference = model.model.get_audio_features(frames, mask, return_dict=True)
        tokens, kept = _audio_embedder(folder)(frames, mask)
    assert torch.equal(kept, reference.attention_mask)
    assert Diff.of(tokens[kept].numpy(), reference.pooler_output[reference.attention_mask].numpy()).relative < TOLERANCE


@pytest.mark.parametrize("kind", ["gemma4_unified_vision", "gemma4_unified_audio"])
def test_each_kind_traces_and_runs_in_onnxruntime(checkpoint, kind):
    folder = checkpoint[1]
    embedder = _image_embedder(folder) if kind.endswith("vision") else _audio_embedder(folder)
    model = trace_encoder(Encoder(kind, embedder.config))
    assert set(model.graph.initializers) == {name for name, _ in embedder.named_parameters()}
    assert [v.name for v in model.graph.inputs] == list(embedder.INPUTS)
    assert [[str(d) for d in v.shape] for v in model.graph.outputs][0][-1] == "48"
    assert all(node.domain == "" for node in model.graph)
    weights = dict(embedder.named_parameters())
    for name, value in model.graph.initializers.items():
        value.const_value = ir.Tensor(weights[name].detach().numpy(), name=name)
    session = cpu_session(ir.serde.serialize_model(model).SerializeToString(), threads=1)
    for size in (20, 35):  # other sizes than the traced example's
        inputs = _images(embedder.config, size, seed=size) if kind.endswith("vision") else _clips(size, seed=size)
        with torch.no_grad():
            tokens, mask = embedder(*inputs)
        got_tokens, got_mask = session.run(None, dict(zip(embedder.INPUTS, (x.numpy() for x in inputs))))
        assert np.array_equal(got_mask, mask.numpy())
        assert Diff.of(got_tokens, tokens.numpy()).relative < TOLERANCE
