"""Gemma 4's image encoder (gemma_graphs.encoders.gemma4_vision) against transformers'
Gemma4ForConditionalGeneration on Gemma4ImageProcessorPil's arrays, loaded by name from the saved
checkpoint; its strict config parser; its meta-device ONNX trace run by onnxruntime."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gemma_export.checkpoints.hf_gemma4_vision import parse_gemma4_vision
from gemma_export.errors import ConfigError
from gemma_export.verify.compare import Diff
from gemma_graphs.config import InvalidConfig
from gemma_graphs.encoders.gemma4_vision import Gemma4ImageEncoder, Gemma4VisionConfig
from tiny import GEMMA4_BASE, PLACEHOLDERS, hf_multimodal_model, randomise

torch.set_num_threads(1)
TOLERANCE = 1e-5  # max |diff| / max |reference|; measured below 1e-6
TOWER = ("vision_tower.", "embed_vision.")
SIZES = ((40, 60), (90, 30))  # (height, width): landscape and tall, both padded to the budget


def _gqa_clipped_model():
    """A second shape: pooling kernel 3, 4 query heads over 2 KV heads, 2 layers, exact GELU,
    clipped linears and standardization, each with random values that act."""
    import transformers

    text = transformers.Gemma4TextConfig(**{**GEMMA4_BASE, "num_hidden_layers": 2,
                                            "layer_types": ["sliding_attention", "full_attention"]})
    vision = transformers.Gemma4VisionConfig(
        hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, patch_size=4, pooling_kernel_size=3, position_embedding_size=64, hidden_activation="gelu",
        use_clipped_linears=True, standardize=True, rope_parameters={"rope_type": "axial", "rope_theta": 50.0})
    cfg = transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=None, **PLACEHOLDERS["gemma4"])
    cfg._attn_implementation = "eager"
    torch.manual_seed(1)
    model = transformers.Gemma4ForConditionalGeneration(cfg).eval()
    randomise(model)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith(("input_min", "output_min")):
                b.uniform_(-1.5, -0.5)
            elif name.endswith(("input_max", "output_max")):
                b.uniform_(0.5, 1.5)
            elif name.endswith("std_bias"):
                b.normal_(0.0, 1.0)
            elif name.endswith("std_scale"):
                b.normal_(1.0, 0.3)
    return model


BUILDERS = {"tiny": lambda: hf_multimodal_model("gemma4"), "gqa-clipped": _gqa_clipped_model}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers' model, its save_pretrained folder)."""
    root = tmp_path_factory.mktemp("gemma4_vision")
    out = {}
    for name, build in BUILDERS.items():
        model = build()
        model.save_pretrained(root / name, safe_serialization=True)
        out[name] = (model, root / name)
    return out


def _config(folder) -> Gemma4VisionConfig:
    raw = json.loads((folder / "config.json").read_text())
    return parse_gemma4_vision(raw["vision_config"], raw["text_config"]["hidden_size"])


def _encoder(folder) -> Gemma4ImageEncoder:
    """Built from the saved config.json, its weights bound by name from the saved safetensors."""
    encoder = Gemma4ImageEncoder(_config(folder)).eval()
    saved = load_file(folder / "model.safetensors")
    tower = {k.removeprefix("model."): v for k, v in saved.items() if k.removeprefix("model.").startswith(TOWER)}
    encoder.load_state_dict(tower, strict=True)  # every tower tensor read, every parameter bound
    return encoder


def _images(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def _processed(cfg: Gemma4VisionConfig, max_soft_tokens: int, seed: int = 0) -> dict:
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    processor = Gemma4ImageProcessorPil(patch_size=cfg.patch_size, max_soft_tokens=max_soft_tokens,
                                        pooling_kernel_size=cfg.pooling_kernel_size)
    return processor(_images(seed), return_tensors="pt")


def _hf_features(model, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.model.get_image_features(batch["pixel_values"], batch["image_position_ids"], return_dict=True)
    return list(out.pooler_output)


def test_saved_config_parses(checkpoints):
    cfg = _config(checkpoints["tiny"][1])
    assert cfg == Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=100.0, patch_size=4,
        position_embedding_size=64, pooling_kernel_size=2, use_clipped_linears=False, standardize=False,
        text_hidden_size=48)
    other = _config(checkpoints["gqa-clipped"][1])
    assert (other.num_key_value_heads, other.pooling_kernel_size, other.rope_theta, other.hidden_activation,
            other.use_clipped_linears, other.standardize) == (2, 3, 50.0, "gelu", True, True)
    assert Gemma4VisionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InvalidConfig, match=r"missing \['standardize'\], unknown \['extra'\]"):
        Gemma4VisionConfig.from_dict({**{k: v for k, v in cfg.to_dict().items() if k != "standardize"}, "extra": 1})


@pytest.mark.parametrize("name,max_soft_tokens", [("tiny", 70), ("tiny", 140), ("gqa-clipped", 70)])
def test_soft_tokens_match_transformers(checkpoints, name, max_soft_tokens):
    model, folder = checkpoints[name]
    encoder = _encoder(folder)
    batch = _processed(encoder.config, max_soft_tokens)
    counts = batch["num_soft_tokens_per_image"].tolist()
    patches = batch["pixel_values"].shape[1]
    assert patches == max_soft_tokens * encoder.config.patches_per_token
    assert len(set(counts)) == 2 and max(counts) < max_soft_tokens  # two sizes, both padded
    reference = _hf_features(model, batch)
    with torch.no_grad():
        tokens, mask = encoder(batch["pixel_values"], batch["image_position_ids"])
    assert tokens.dtype == torch.float32 and tokens.shape == (2, max_soft_tokens, encoder.config.text_hidden_size)
    for i, count in enumerate(counts):
        # The real slots are the first num_soft_tokens_per_image: what the runtime cuts by.
        assert mask[i].tolist() == [True] * count + [False] * (max_soft_tokens - count)
        assert reference[i].shape == (count, encoder.config.text_hidden_size)
        assert Diff.of(tokens[i][mask[i]].numpy(), reference[i].numpy()).relative < TOLERANCE


def test_placeholder_rows_are_the_soft_tokens(checkpoints):
    """What Gemma4Model splices into its image placeholders (the language model's inputs_embeds
    rows there) is soft_tokens[i][soft_token_mask[i]], image after image."""
    model, folder = checkpoints["tiny"]
    encoder = _encoder(folder)
    batch = _processed(encoder.config, 70, seed=1)
    ids = PLACEHOLDERS["gemma4"]
    prompt = [2]
    for count in batch["num_soft_tokens_per_image"].tolist():
        prompt += [ids["boi_token_id"]] + [ids["image_token_id"]] * count + [ids["eoi_token_id"], 7]
    input_ids = torch.tensor([prompt])
    seen = {}

    class Stop(Exception):
        pass

    def capture(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]
        raise Stop

    handle = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad(), pytest.raises(Stop):
            model.model(input_ids=input_ids, pixel_values=batch["pixel_values"],
                        image_position_ids=batch["image_position_ids"])
    finally:
        handle.remove()
    with torch.no_grad():
        tokens, mask = encoder(batch["pixel_values"], batch["image_position_ids"])
    spliced = seen["embeds"][0][input_ids[0] == ids["image_token_id"]]
    assert Diff.of(torch.cat([tokens[0][mask[0]], tokens[1][mask[1]]]).numpy(), spliced.numpy()).relative < TOLERANCE


def _raw(checkpoints) -> dict:
    return json.loads((checkpoints["tiny"][1] / "config.json").read_text())["vision_config"]


@pytest.mark.parametrize("change,message", [
    ({"model_type": "siglip_vision_model"}, "model_type = 'siglip_vision_model' is not supported"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 100.0}}, "rope_type = 'default' is not supported"),
    ({"rope_parameters": {"rope_type": "axial", "rope_theta": "big"}}, "rope_theta = 'big' is not a number"),
    ({"rope_parameters": {"rope_type": "axial", "rope_theta": 1.0, "factor": 2}}, "unsupported field.*factor"),
    ({"pooling_kernel_size": 1}, "pooling_kernel_size = 1 is not supported"),
    ({"hidden_activation": "relu"}, "hidden_activation = 'relu' is not supported"),
    ({"head_dim": 6}, "head_dim = 6 must be a multiple of 4"),
    ({"num_key_value_heads": 3}, "num_attention_heads = 2 is not a multiple of num_key_value_heads = 3"),
    ({"attention_bias": True}, "attention_bias = True is not supported"),
    ({"standardize": 1}, "'standardize' = 1 has an unsupported type"),
    ({"hidden_size": True}, "'hidden_size' has type bool"),
    ({"num_hidden_layers": 0}, "num_hidden_layers = 0 is not a supported layer count"),
    ({"output_proj_dims": 64}, "unknown or unsupported config field.*output_proj_dims"),
    ({"use_clipped_linears": None}, "use_clipped_linears"),
])
def test_refusals_name_the_field(checkpoints, change, message):
    with pytest.raises(ConfigError, match=message):
        parse_gemma4_vision({**_raw(checkpoints), **change}, 48, where="vision_config")


@pytest.mark.parametrize("field", ["standardize", "use_clipped_linears", "rope_parameters", "head_dim", "model_type"])
def test_missing_fields_are_refused(checkpoints, field):
    raw = {k: v for k, v in _raw(checkpoints).items() if k != field}
    with pytest.raises(ConfigError, match=f"required field '{field}' is missing"):
        parse_gemma4_vision(raw, 48, where="vision_config")


@pytest.fixture(scope="module")
def traced(checkpoints):
    """The gqa-clipped encoder cut to its first layer (tracing costs seconds per layer) traced on the
    meta device, images and patches dynamic."""
    from gemma_export.frontend.trace import _quiet

    cfg = dataclasses.replace(_config(checkpoints["gqa-clipped"][1]), num_hidden_layers=1)
    with torch.device("meta"):
        module = Gemma4ImageEncoder(cfg).eval()
    cell = cfg.patches_per_token
    args = (torch.zeros(2, 3 * cell, cfg.patch_pixels, device="meta"),
            torch.zeros(2, 3 * cell, 2, dtype=torch.int64, device="meta"))
    # At least 2 soft tokens: torch.export would otherwise specialise a size-1 token axis; the
    # processor's smallest budget is 70.
    images, patches = torch.export.Dim("images"), torch.export.Dim("patches", min=2 * cell)
    with _quiet():
        program = torch.onnx.export(module, args, dynamo=True, optimize=False, opset_version=24,
                                    dynamic_shapes=({0: images, 1: patches}, {0: images, 1: patches}),
                                    input_names=list(Gemma4ImageEncoder.INPUTS),
                                    output_names=list(Gemma4ImageEncoder.OUTPUTS), verbose=False)
    return module, program.model


def test_trace_names_its_initializers_as_parameters(traced):
    module, model = traced
    expected = {name for name, _ in module.named_parameters()} | set(module.constant_buffers())
    assert set(model.graph.initializers) == expected
    assert [v.name for v in model.graph.inputs] == ["pixel_values", "image_position_ids"]
    assert [v.name for v in model.graph.outputs] == ["soft_tokens", "soft_token_mask"]
    dims = [[str(d) for d in v.shape] for v in [*model.graph.inputs, *model.graph.outputs]]
    assert dims == [["images", "patches", "48"], ["images", "patches", "2"],
                    ["images", "(patches//9)", "48"], ["images", "(patches//9)"]]
    # Standard ops only (TensorRT parses them); attention as MatMul / Softmax.
    ops = {(node.domain, node.op_type) for node in model.graph}
    assert all(domain == "" for domain, _ in ops) and ("", "Softmax") in ops


def test_onnxruntime_matches_eager(traced, checkpoints):
    """The meta trace with the checkpoint's weights bound by name, run by onnxruntime, equals the
    eager module of the same (one-layer) config at two patch counts (630 and 1260 patches)."""
    import onnx_ir as ir

    from gemma_export.ort_run import cpu_session

    module, model = traced
    folder = checkpoints["gqa-clipped"][1]
    saved = {k.removeprefix("model."): v for k, v in load_file(folder / "model.safetensors").items()}
    encoder = Gemma4ImageEncoder(module.config).eval()
    encoder.load_state_dict({k: saved[k] for k, _ in encoder.named_parameters()}, strict=True)
    values = {**{k: v.detach() for k, v in encoder.named_parameters()}, **encoder.constant_buffers()}
    for name, value in model.graph.initializers.items():
        value.const_value = ir.Tensor(values[name].numpy(), name=name)
    session = cpu_session(ir.serde.serialize_model(model).SerializeToString(), threads=1)
    for max_soft_tokens in (70, 140):
        batch = _processed(encoder.config, max_soft_tokens, seed=2)
        with torch.no_grad():
            tokens, mask = encoder(batch["pixel_values"], batch["image_position_ids"])
        got_tokens, got_mask = session.run(None, {"pixel_values": batch["pixel_values"].numpy(),
                                                  "image_position_ids": batch["image_position_ids"].numpy()})
        assert got_tokens.shape == (2, max_soft_tokens, 48)
        assert np.array_equal(got_mask, mask.numpy())
        for i in range(2):  # the real slots; the others hold values of no meaning
            assert Diff.of(got_tokens[i][got_mask[i]], tokens[i][mask[i]].numpy()).relative < TOLERANCE
