"""Gemma 3's image encoder (graphs/encoders/gemma3_vision.py) against transformers'
Gemma3Model.get_image_features on tiny random checkpoints, its config parser's reading and
refusals. Its ONNX export (traced on the meta device, bound by name, run by onnxruntime) is checked end to
end by tests/test_multimodal.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from gemma_export.checkpoints.hf_gemma3_vision import MM_TOKENS_DEFAULT, SIGLIP_DEFAULTS, parse_gemma3_vision
from gemma_export.errors import ConfigError
from gemma_graphs.config import InvalidConfig
from gemma_graphs.encoders.gemma3_vision import Gemma3ImageEncoder, Gemma3VisionConfig, unread_parameters
from tiny import BASE, CONFIGS, PLACEHOLDERS, hf_multimodal_model, randomise

TOLERANCE = 1e-5  # max |diff| / max |reference|

# A second shape beside tiny.py's (1 layer, 2x2 patches pooled to 4 tokens, with SigLIP's head):
# 2 layers, 8x8 patches pooled by 2 to 16 tokens, 4 heads, no head, another eps.
WIDE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=56,
            patch_size=7, layer_norm_eps=1e-5, vision_use_head=False)


def wide_model():
    import transformers

    text = transformers.Gemma3TextConfig(**{**BASE, **CONFIGS["gemma3"][1]})
    cfg = transformers.Gemma3Config(text_config=text, vision_config=transformers.SiglipVisionConfig(**WIDE),
                                    mm_tokens_per_image=16, **PLACEHOLDERS["gemma3"])
    cfg._attn_implementation = cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(1)
    model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    randomise(model)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """name -> (transformers' model, its saved folder)."""
    torch.set_num_threads(1)
    saved = {}
    for name, model in (("tiny", hf_multimodal_model("gemma3")), ("wide", wide_model())):
        folder = tmp_path_factory.mktemp(f"gemma3-vision-{name}")
        model.save_pretrained(folder, safe_serialization=True)
        saved[name] = model, folder
    return saved


@pytest.fixture(params=["tiny", "wide"])
def checkpoint(request, checkpoints):
    return checkpoints[request.param]


def read_config(folder) -> Gemma3VisionConfig:
    raw = json.loads((folder / "config.json").read_text())
    return parse_gemma3_vision(raw["vision_config"], raw, raw["text_config"]["hidden_size"], str(folder))


def tower_tensors(folder) -> dict[str, np.ndarray]:
    """The saved tensors of the image tower and projector, by their checkpoint names."""
    return {k: v for k, v in load_file(folder / "model.safetensors").items()
            if k.startswith(("vision_tower.", "multi_modal_projector."))}


def load_encoder(folder) -> Gemma3ImageEncoder:
    encoder = Gemma3ImageEncoder(read_config(folder)).eval()
    saved = tower_tensors(folder)
    read = {k: torch.from_numpy(v) for k, v in saved.items() if k not in unread_parameters(saved)}
    encoder.load_state_dict(read, strict=True)  # every parameter bound by its checkpoint name, none left over
    return encoder


def relative(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def pixels(cfg: Gemma3VisionConfig, images: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(images, cfg.num_channels, cfg.image_size, cfg.image_size,
                       generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("images", [1, 3])
def test_soft_tokens_match_transformers(checkpoint, images):
    model, folder = checkpoint
    encoder = load_encoder(folder)
    x = pixels(encoder.config, images)
    with torch.no_grad():
        ref = model.model.get_image_features(x).pooler_output
        ours = encoder(x)
    cfg = model.config
    assert ours.dtype == torch.float32
    assert ours.shape == (images, cfg.mm_tokens_per_image, cfg.text_config.hidden_size) == ref.shape
    assert relative(ours, ref) <= TOLERANCE


def test_unread_tensors_are_the_pooling_head_only(checkpoint):
    model, folder = checkpoint
    saved = set(tower_tensors(folder))
    head = {k for k in saved if k.startswith("vision_tower.head.")}
    assert bool(head) == model.config.vision_config.vision_use_head
    assert unread_parameters(saved) == head
    assert not unread_parameters(["multi_modal_projector.mm_input_projection_weight",
                                  "vision_tower.post_layernorm.weight"])
    assert {name for name, _ in Gemma3ImageEncoder(read_config(folder)).named_parameters()} == saved - head


def test_saved_config_reads(checkpoint):
    model, folder = checkpoint
    vision, text = model.config.vision_config, model.config.text_config
    assert read_config(folder) == Gemma3VisionConfig(
        hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers, num_attention_heads=vision.num_attention_heads,
        image_size=vision.image_size, patch_size=vision.patch_size, num_channels=3,
        layer_norm_eps=vision.layer_norm_eps, hidden_act="gelu_pytorch_tanh",
        mm_tokens_per_image=model.config.mm_tokens_per_image, text_hidden_size=text.hidden_size)


def test_defaults_are_transformers():
    """A field transformers left out of the saved config reads as its class default."""
    import transformers

    siglip = transformers.SiglipVisionConfig()
    assert SIGLIP_DEFAULTS == {name: getattr(siglip, name) for name in SIGLIP_DEFAULTS}
    assert MM_TOKENS_DEFAULT == transformers.Gemma3Config().mm_tokens_per_image
    # The published Gemma 3 4B's vision_config, which leaves out channels, activation and eps.
    published = dict(hidden_size=1152, image_size=896, intermediate_size=4304, model_type="siglip_vision_model",
                     num_attention_heads=16, num_hidden_layers=27, patch_size=14, vision_use_head=False)
    cfg = parse_gemma3_vision(published, {"mm_tokens_per_image": 256}, 2560)
    assert (cfg.num_channels, cfg.hidden_act, cfg.layer_norm_eps) == (3, "gelu_pytorch_tanh", 1e-6)
    assert (cfg.patches_per_side, cfg.tokens_per_side, cfg.pool_kernel) == (64, 16, 4)


TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                   image_size=28, patch_size=14, model_type="siglip_vision_model", attention_dropout=0.0,
                   vision_use_head=True, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3)


@pytest.mark.parametrize("vision, mm_tokens, message", [
    (dict(TINY_VISION, rope_theta=1.0), 4, "rope_theta"),
    (dict(TINY_VISION, hidden_act="gelu"), 4, "hidden_act = 'gelu'"),
    (dict(TINY_VISION, hidden_act="quick_gelu"), 4, "hidden_act"),
    (dict(TINY_VISION, model_type="clip_vision_model"), 4, "model_type"),
    (dict(TINY_VISION, image_size=[28, 28]), 4, "image_size"),
    (dict(TINY_VISION, num_hidden_layers=True), 4, "num_hidden_layers"),
    (dict(TINY_VISION, num_hidden_layers=0), 4, "num_hidden_layers"),
    (dict(TINY_VISION, vision_use_head="yes"), 4, "vision_use_head"),
    (dict(TINY_VISION, hidden_size=15), 4, "hidden_size"),
    (dict(TINY_VISION, image_size=30), 4, "image_size"),
    (TINY_VISION, 2, "mm_tokens_per_image = 2 is not a square"),
    (TINY_VISION, 9, "mm_tokens_per_image = 9 (3 per side) does not divide the patch grid (2 patches per side"),
    (TINY_VISION, 4.0, "mm_tokens_per_image"),
])
def test_refusals_name_the_field(vision, mm_tokens, message):
    with pytest.raises(ConfigError, match="config.json") as error:
        parse_gemma3_vision(vision, {"mm_tokens_per_image": mm_tokens}, 48, "config.json")
    assert message in str(error.value)


def test_config_round_trips_and_from_dict_is_strict():
    cfg = parse_gemma3_vision(TINY_VISION, {"mm_tokens_per_image": 1}, 48)
    # Fields without effect on the soft tokens are accepted whatever their value.
    assert parse_gemma3_vision(dict(TINY_VISION, projection_dim=2048, vision_use_head=False, attention_dropout=0.1),
                               {"mm_tokens_per_image": 1}, 48) == cfg
    assert cfg.pool_kernel == 2 and Gemma3VisionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InvalidConfig, match="unknown fields: \\['extra'\\]"):
        Gemma3VisionConfig.from_dict({**cfg.to_dict(), "extra": 1})
    with pytest.raises(InvalidConfig, match="lacks fields \\['text_hidden_size'\\]"):
        Gemma3VisionConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "text_hidden_size"})
    with pytest.raises(InvalidConfig, match="hidden_act"):
        Gemma3VisionConfig.from_dict({**cfg.to_dict(), "hidden_act": "relu"})
