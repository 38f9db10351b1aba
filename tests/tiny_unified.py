"""A tiny random Gemma 4 Unified checkpoint (Gemma4UnifiedForConditionalGeneration: the encoder-free
patch and audio-frame embedders beside its text decoder) written by transformers' save_pretrained,
its processor settings, and a prompt with two images and an audio clip as transformers' processor
lays it out.

transformers' Gemma4UnifiedImageProcessor needs torchvision, which the project does not install. Its
settings file is Gemma4ImageProcessorPil's (the same fields and defaults) under the unified class
name, and the reference arrays come from Gemma4ImageProcessorPil (the same resize rule and rescale;
PIL's bicubic where the unified class uses torchvision's) followed by the unified processor's own
patches_merge and pad_along_first_dim, run from transformers' source (reference_functions)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import torch

from tiny import GEMMA4_BASE, PLACEHOLDERS, randomise

# Sliding layers with a window of 72: at least the image budget (70 tokens), below the prompt's
# length; K = V and one KV head on full layers, KV sharing of both types, double-wide shared MLPs.
TEXT = dict({k: v for k, v in GEMMA4_BASE.items() if k != "hidden_size_per_layer_input"}, num_hidden_layers=4,
            layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=72, attention_k_eq_v=True,
            num_global_key_value_heads=1, num_kv_shared_layers=2, use_double_wide_mlp=True)
VISION = dict(patch_size=4, pooling_kernel_size=2, mm_embed_dim=40, mm_posemb_size=16, output_proj_dims=40)
SAMPLES_PER_TOKEN = 16
IMAGE_BUDGET = 70


def hf_unified_model(seed: int = 0, **text_overrides):
    import transformers

    cfg = transformers.Gemma4UnifiedConfig(
        text_config=transformers.Gemma4UnifiedTextConfig(**{**TEXT, **text_overrides}),
        vision_config=transformers.Gemma4UnifiedVisionConfig(**VISION),
        audio_config=transformers.Gemma4UnifiedAudioConfig(audio_embed_dim=SAMPLES_PER_TOKEN),
        **PLACEHOLDERS["gemma4"])
    cfg.text_config._attn_implementation = "eager"
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.Gemma4UnifiedForConditionalGeneration(cfg).eval()
    randomise(model)
    return model


def hf_image_processor():
    """Gemma4ImageProcessorPil at the tiny checkpoint's settings: the unified processor's teacher
    patches (before they are merged)."""
    import transformers
    return transformers.Gemma4ImageProcessorPil(patch_size=VISION["patch_size"], max_soft_tokens=IMAGE_BUDGET,
                                                pooling_kernel_size=VISION["pooling_kernel_size"])


def hf_feature_extractor():
    import transformers
    return transformers.Gemma4UnifiedAudioFeatureExtractor(feature_size=SAMPLES_PER_TOKEN,
                                                           audio_samples_per_token=SAMPLES_PER_TOKEN)


def write_unified_checkpoint(folder: Path, seed: int = 0) -> Path:
    """The checkpoint and processor_config.json (image processor and feature extractor)."""
    hf_unified_model(seed).save_pretrained(folder, safe_serialization=True)
    image = dict(json.loads(hf_image_processor().to_json_string()), image_processor_type="Gemma4UnifiedImageProcessor")
    processor = {"image_processor": image, "feature_extractor": json.loads(hf_feature_extractor().to_json_string())}
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return folder


def reference_functions() -> dict:
    """transformers' Gemma4UnifiedImageProcessor helpers (get_aspect_ratio_preserving_size,
    convert_image_to_patches, pad_along_first_dim, patches_merge), compiled from its module's source:
    importing the module needs torchvision, these functions do not."""
    import transformers.models.gemma4_unified as package

    path = Path(package.__file__).parent / "image_processing_gemma4_unified.py"
    tree = ast.parse(path.read_text())
    wanted = {"get_aspect_ratio_preserving_size", "convert_image_to_patches", "pad_along_first_dim", "patches_merge"}
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    namespace = {"torch": torch, "math": math}
    exec(compile(ast.Module(functions, []), str(path), "exec"), namespace)
    return {name: namespace[name] for name in wanted}


def reference_image_arrays(images) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(pixel_values, image_position_ids, soft tokens per image) as Gemma4UnifiedImageProcessor makes
    them, from Gemma4ImageProcessorPil's teacher patches (see the module's note)."""
    fns = reference_functions()
    teacher = hf_image_processor()(images, return_tensors="pt")
    k = VISION["pooling_kernel_size"]
    pixels, positions, counts = [], [], []
    for patches, xy, count in zip(teacher["pixel_values"], teacher["image_position_ids"],
                                  teacher["num_soft_tokens_per_image"]):
        count = int(count)
        merged, merged_xy = fns["patches_merge"](patches[None, :count * k * k], xy[None, :count * k * k], count)
        merged, merged_xy = fns["pad_along_first_dim"](merged[0], merged_xy[0], IMAGE_BUDGET)
        pixels.append(merged.numpy())
        positions.append(merged_xy.numpy())
        counts.append(count)
    return np.stack(pixels), np.stack(positions), counts


def image_and_audio_prompt(rng) -> tuple[list[int], dict]:
    """Two random images of different sizes and one clip, as transformers' processor lays them out:
    the expanded ids and the arrays, mm_token_type_ids included (1 image, 3 audio)."""
    from PIL import Image

    from tiny import placeholder_ids

    images = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8))]
    pixels, positions, counts = reference_image_arrays(images)
    clip = rng.standard_normal(150).astype(np.float32) * 0.1
    audio = hf_feature_extractor()([clip], sampling_rate=16000, return_tensors="np")
    ph = PLACEHOLDERS["gemma4"]
    image, boi, eoi = placeholder_ids("gemma4")
    clip_tokens = int(audio["input_features_mask"][0].sum())
    ids = [2, 5, 6, boi, *[image] * counts[0], eoi, 7, ph["boa_token_id"], *[ph["audio_token_id"]] * clip_tokens,
           ph["eoa_token_index"], 8, boi, *[image] * counts[1], eoi, 9, 10, 11]
    types = [1 if i == image else 3 if i == ph["audio_token_id"] else 0 for i in ids]
    arrays = {"pixel_values": pixels, "image_position_ids": positions,
              "input_features": audio["input_features"], "input_features_mask": audio["input_features_mask"],
              "mm_token_type_ids": np.array([types])}
    return ids, arrays
