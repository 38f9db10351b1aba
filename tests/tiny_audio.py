"""Tiny random audio-capable Gemma 4 checkpoints (Gemma4ForConditionalGeneration with an
audio_config, as E2B/E4B have) written by transformers' save_pretrained, every weight and every
clipped linear's bounds randomised."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tiny import GEMMA4_BASE, GEMMA4_CONFIGS, PLACEHOLDERS, randomise

MEL_BINS = 16  # subsampling_conv_channels[0] // 4 bins are left after the two stride-2 convolutions

# The published chunk/context ratio (12, 13, 0) at a third of the size, one layer (the trace test's);
# the second has two layers, a future context and unclipped linears. Small caps and clipping so
# that tanh and the clamps bite.
AUDIO_CONFIGS = {
    "audio": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, subsampling_conv_channels=[16, 8],
                  attention_chunk_size=4, attention_context_left=5, attention_context_right=0,
                  attention_logit_cap=3.0, gradient_clipping=4.0, rms_norm_eps=0.05, residual_weight=0.7,
                  conv_kernel_size=3, output_proj_dims=24, use_clipped_linears=True),
    "audio-future": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, subsampling_conv_channels=[16, 4],
                         attention_chunk_size=3, attention_context_left=4, attention_context_right=3,
                         attention_logit_cap=50.0, rms_norm_eps=1e-3, conv_kernel_size=5, output_proj_dims=20,
                         use_clipped_linears=False),
}


def hf_audio_model(name: str = "audio", seed: int = 0):
    """Gemma4ForConditionalGeneration: the gemma4-shared text decoder, a tiny vision tower and the
    named tiny audio tower; placeholder ids as tests/tiny.py's multimodal checkpoints."""
    import transformers

    _, extra = GEMMA4_CONFIGS["gemma4-shared"]
    text = transformers.Gemma4TextConfig(**{**GEMMA4_BASE, **extra})
    vision = transformers.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                             patch_size=4, pooling_kernel_size=2, position_embedding_size=64)
    audio = transformers.Gemma4AudioConfig(**AUDIO_CONFIGS[name])
    cfg = transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=audio,
                                    **PLACEHOLDERS["gemma4"])
    cfg.text_config._attn_implementation = "eager"
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.Gemma4ForConditionalGeneration(cfg).eval()
    randomise(model)
    _randomise_clip_bounds(model)
    return model


def _randomise_clip_bounds(model) -> None:
    """transformers leaves the bounds at +-inf; real checkpoints store finite ones. About 5% of a
    normalised input falls outside +-2."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith(("input_min", "output_min")):
                b.fill_(-abs(float(torch.normal(2.0, 0.5, ()))))
            elif name.endswith(("input_max", "output_max")):
                b.fill_(abs(float(torch.normal(2.0, 0.5, ()))))


def hf_feature_extractor():
    import transformers
    return transformers.Gemma4AudioFeatureExtractor(feature_size=MEL_BINS)


def write_audio_checkpoint(folder: Path, name: str = "audio", seed: int = 0) -> Path:
    """The checkpoint with its processor settings as transformers 5 saves a processor: one
    processor_config.json holding the image processor and the feature extractor."""
    from tiny import hf_image_processor

    hf_audio_model(name, seed).save_pretrained(folder, safe_serialization=True)
    processor = {"image_processor": json.loads(hf_image_processor("gemma4").to_json_string()),
                 "feature_extractor": json.loads(hf_feature_extractor().to_json_string())}
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return folder


def random_features(lengths: list[int], frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """input_features [clips, frames, MEL_BINS] and the bool mask true over each clip's first
    `length` frames; padding frames zero, as Gemma4AudioFeatureExtractor pads."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]
    features = torch.randn(len(lengths), frames, MEL_BINS, generator=g) * mask[..., None]
    return features, mask


def audio_prompt(rng) -> tuple[list[int], dict]:
    """A prompt with two random clips of different lengths (padding) and an image, as transformers'
    processor makes it: the expanded ids and the arrays, mm_token_type_ids included."""
    import numpy as np
    from PIL import Image

    from gemma_runtime.media.gemma4_audio import soft_tokens
    from tiny import hf_image_processor, placeholder_ids

    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (4000, 2500)]
    arrays = dict(hf_feature_extractor()(clips, sampling_rate=16000, return_tensors="np"))
    pixels = hf_image_processor("gemma4")([Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))],
                                           return_tensors="np")
    arrays.update(pixel_values=pixels["pixel_values"], image_position_ids=pixels["image_position_ids"])
    ph = PLACEHOLDERS["gemma4"]
    image, boi, eoi = placeholder_ids("gemma4")
    audio = [[ph["audio_token_id"]] * soft_tokens(mask) for mask in arrays["input_features_mask"]]
    ids = [2, 5, ph["boa_token_id"], *audio[0], ph["eoa_token_index"], 6, boi,
           *[image] * int(pixels["num_soft_tokens_per_image"][0]), eoi, 7, ph["boa_token_id"], *audio[1],
           ph["eoa_token_index"], 8, 9]
    arrays["mm_token_type_ids"] = np.array([[1 if i == image else 3 if i == ph["audio_token_id"] else 0 for i in ids]])
    return ids, arrays
