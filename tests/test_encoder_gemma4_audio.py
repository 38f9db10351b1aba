"""Gemma 4's audio encoder (graphs/encoders/gemma4_audio.py) against transformers' Gemma4Model on
tiny random checkpoints; its config parser. Its ONNX export (the meta trace bound by name, run by
onnxruntime) is checked end to end by tests/test_multimodal.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from gemma_export.checkpoints.hf_gemma4_audio import parse_gemma4_audio
from gemma_export.errors import ConfigError
from gemma_graphs.config import InvalidConfig
from gemma_graphs.encoders.gemma4_audio import Gemma4AudioConfig, Gemma4AudioEncoder
from tiny import PLACEHOLDERS
from tiny_audio import AUDIO_CONFIGS, hf_audio_model, random_features

TOLERANCE = 1e-5  # max |diff| / max |reference| over the real tokens; measured below 1e-6

# (each clip's real frames, the batch's frame count): tokens are ceil(frames / 4), so 37 frames
# give 10 tokens (not a multiple of either chunk size), 32 give 8 and 36 give 9; the last batch
# has no padding; a 1-frame clip has one token.
BATCHES = [([37, 20, 9, 1], 37), ([32, 17], 32), ([36, 36], 36)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(AUDIO_CONFIGS))
def checkpoint(request, tmp_path_factory):
    """(transformers' model, its save_pretrained folder) for each tiny audio config."""
    model = hf_audio_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder, request.param


def _config(folder) -> Gemma4AudioConfig:
    raw = json.loads((folder / "config.json").read_text())
    return parse_gemma4_audio(raw["audio_config"], raw["text_config"]["hidden_size"],
                              where=f"{folder}/config.json audio_config")


def _weights(folder) -> dict[str, torch.Tensor]:
    """The checkpoint's audio tensors, named as the encoder names them (no leading `model.`)."""
    tensors = load_file(folder / "model.safetensors")
    return {name.removeprefix("model."): t for name, t in tensors.items()
            if name.startswith(("model.audio_tower.", "model.embed_audio."))}


def _encoder(folder) -> Gemma4AudioEncoder:
    encoder = Gemma4AudioEncoder(_config(folder)).eval()
    encoder.load_state_dict(_weights(folder), strict=True)  # every audio tensor read, none missing
    return encoder


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("lengths, frames", BATCHES)
def test_matches_get_audio_features(checkpoint, lengths, frames):
    model, folder, _ = checkpoint
    encoder = _encoder(folder)
    features, mask = random_features(lengths, frames, seed=frames)
    with torch.no_grad():
        ref = model.model.get_audio_features(features, mask, return_dict=True)
        tokens, token_mask = encoder(features, mask)
    assert tokens.dtype == torch.float32 and tokens.shape == (len(lengths), math.ceil(frames / 4), 48)
    assert torch.equal(token_mask, ref.attention_mask)
    assert token_mask.sum(1).tolist() == [math.ceil(n / 4) for n in lengths]
    assert _relative(tokens[token_mask], ref.pooler_output[ref.attention_mask]) < TOLERANCE


def test_padding_content_is_ignored(checkpoint):
    """What lies in a clip's padding frames changes none of its real tokens."""
    _, folder, _ = checkpoint
    encoder = _encoder(folder)
    features, mask = random_features([37, 20, 9, 1], 37)
    noisy = torch.where(mask[..., None], features, torch.randn_like(features) * 10)
    with torch.no_grad():
        clean, token_mask = encoder(features, mask)
        dirty, _ = encoder(noisy, mask)
    assert _relative(dirty[token_mask], clean[token_mask]) < TOLERANCE


def test_rows_scattered_at_audio_placeholders(checkpoint):
    """The real tokens, clip after clip, are the rows Gemma4Model.forward writes at the audio
    placeholders of a prompt (the embeddings its language model receives)."""
    model, folder, _ = checkpoint
    lengths, frames = [37, 9, 20], 37
    features, mask = random_features(lengths, frames, seed=1)
    ids = PLACEHOLDERS["gemma4"]
    prompt = [2, 10]
    for n in lengths:
        prompt += [ids["boa_token_id"]] + [ids["audio_token_id"]] * math.ceil(n / 4) + [ids["eoa_token_index"], 11]
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(input_ids=torch.tensor([prompt]), input_features=features, input_features_mask=mask)
    finally:
        hook.remove()
    with torch.no_grad():
        tokens, token_mask = _encoder(folder)(features, mask)
    placed = seen["embeds"][0, torch.tensor(prompt) == ids["audio_token_id"]]
    assert _relative(tokens[token_mask], placed) < TOLERANCE


def test_parses_saved_config(checkpoint):
    _, folder, name = checkpoint
    cfg = _config(folder)
    written = AUDIO_CONFIGS[name]
    expected = {**written, "subsampling_conv_channels": tuple(written["subsampling_conv_channels"])}
    for field, value in expected.items():
        assert getattr(cfg, field) == value, field
    assert cfg.text_hidden_size == 48 and cfg.hidden_act == "silu"
    assert Gemma4AudioConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


AUDIO_FIELDS = dict(AUDIO_CONFIGS["audio"], hidden_act="silu", attention_invalid_logits_value=-1e9,
                    model_type="gemma4_audio", initializer_range=0.02, dtype="float32")


@pytest.mark.parametrize("change, message", [
    (dict(surprise=1), "unknown or unsupported config field(s): surprise"),
    (dict(attention_chunk_size=None), "required field 'attention_chunk_size' is missing"),
    (dict(hidden_act="gelu"), "hidden_act = 'gelu' is not supported"),
    (dict(model_type="gemma3n_audio"), "model_type = 'gemma3n_audio' is not supported"),
    (dict(subsampling_conv_channels=[16, 8, 4]), "subsampling_conv_channels"),
    (dict(num_attention_heads=3), "hidden_size = 16 is not a multiple of num_attention_heads = 3"),
    (dict(attention_context_left=1), "attention_context_left = 1 is not supported"),
    (dict(attention_invalid_logits_value=-10.0), "attention_invalid_logits_value = -10.0 is not supported"),
    (dict(use_clipped_linears=1), "use_clipped_linears"),
    (dict(num_hidden_layers=True), "num_hidden_layers"),
    (dict(rms_norm_eps="1e-6"), "rms_norm_eps"),
    (dict(attention_logit_cap=0.0), "attention_logit_cap = 0.0 must be a positive finite float"),
])
def test_refuses(change, message):
    raw = {**AUDIO_FIELDS, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match="audio_config") as e:
        parse_gemma4_audio(raw, 48, where="config.json audio_config")
    assert message in str(e.value)


def test_from_dict_is_strict():
    cfg = parse_gemma4_audio(AUDIO_FIELDS, 48)
    with pytest.raises(InvalidConfig, match="unknown field"):
        Gemma4AudioConfig.from_dict({**cfg.to_dict(), "extra": 1})
    with pytest.raises(InvalidConfig, match="missing field"):
        Gemma4AudioConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "rms_norm_eps"})
