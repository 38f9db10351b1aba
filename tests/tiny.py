"""Tiny random Gemma checkpoints written by transformers' save_pretrained (the independent
reference), with norm weights randomised so the 1 + w path is exercised."""

from __future__ import annotations

from pathlib import Path

import torch

# head_dim != hidden / heads on purpose (as in Gemma 7B).
# head_dim a multiple of 16: onnxruntime's GroupQueryAttention rotates only such heads (every real Gemma's is).
BASE = dict(vocab_size=384, hidden_size=48, intermediate_size=96, num_hidden_layers=3, head_dim=32,
            max_position_embeddings=256, rms_norm_eps=1e-6)
CONFIGS = {
    "gemma-mqa": ("gemma", dict(num_attention_heads=4, num_key_value_heads=1)),
    "gemma-mha": ("gemma", dict(num_attention_heads=4, num_key_value_heads=4)),
    "gemma2": ("gemma2", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                              query_pre_attn_scalar=20, attn_logit_softcapping=5.0,
                              final_logit_softcapping=3.0, num_hidden_layers=4)),
    "gemma3": ("gemma3", dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=6,
                              query_pre_attn_scalar=24, num_hidden_layers=6,
                              layer_types=["sliding_attention"] * 2 + ["full_attention"]
                              + ["sliding_attention"] * 2 + ["full_attention"],
                              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                               "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 1000000.0}})),
}


# Gemma 4: sliding head_dim 32, global 64 (proportional RoPE: 8 of 32 pairs rotate), window 6.
GEMMA4_BASE = dict(BASE, num_attention_heads=4, num_key_value_heads=2, global_head_dim=64, sliding_window=6,
                   final_logit_softcapping=30.0, hidden_size_per_layer_input=0)
GEMMA4_CONFIGS = {
    # KV sharing of both layer types (3, 4 read layer 1; 5 reads layer 2), per-layer inputs, double-wide MLP
    "gemma4-shared": ("gemma4", dict(num_hidden_layers=6, layer_types=["sliding_attention", "sliding_attention",
                                                                         "full_attention"] * 2,
                                     num_kv_shared_layers=3, hidden_size_per_layer_input=8,
                                     vocab_size_per_layer_input=BASE["vocab_size"], use_double_wide_mlp=True)),
    # full layers with K = V and 1 KV head (sliding layers 2)
    "gemma4-k-eq-v": ("gemma4", dict(num_hidden_layers=4, layer_types=["sliding_attention"] * 3 + ["full_attention"],
                                     attention_k_eq_v=True, num_global_key_value_heads=1)),
    # experts beside the MLP: 4 experts, top 2
    "gemma4-moe": ("gemma4", dict(num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2,
                                  enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=24,
                                  attention_k_eq_v=True, num_global_key_value_heads=1)),
}


# Gemma 3n: 4 AltUp streams, LAuReL, per-layer inputs from a table smaller than the vocabulary
# (ids 320 and up look up row 0), sparse MLPs on layers 0-1, KV sharing of both layer types
# (4 reads layer 3, 5 reads layer 2), window 6, a final softcap that bites.
GEMMA3N_CONFIGS = {
    "gemma3n": ("gemma3n", dict(BASE, num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                                num_hidden_layers=6, layer_types=["sliding_attention", "sliding_attention",
                                                                  "full_attention"] * 2,
                                num_kv_shared_layers=2, activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
                                hidden_size_per_layer_input=8, vocab_size_per_layer_input=320, laurel_rank=8,
                                altup_num_inputs=4, final_logit_softcapping=5.0)),
}
FAMILY_CONFIGS = {**CONFIGS, **GEMMA4_CONFIGS, **GEMMA3N_CONFIGS}


def hf_model(name: str, seed: int = 0, **overrides):
    import transformers

    family, extra = FAMILY_CONFIGS[name]
    kw = {**(GEMMA4_BASE if family == "gemma4" else BASE), **extra, **overrides}
    classes = {"gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
               "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
               "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
               "gemma3n": (transformers.Gemma3nTextConfig, transformers.Gemma3nForCausalLM),
               "gemma4": (transformers.Gemma4TextConfig, transformers.Gemma4ForCausalLM)}
    config_class, model_class = classes[family]
    cfg = config_class(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_class(cfg).eval()
    randomise(model)
    return model


def randomise(model) -> None:
    """Every weight random, norms and Gemma 4's scales and layer scalars included: transformers
    initialises them to a constant, which would hide a wrong 1 + w or a missing scalar. Gemma 4's
    norms multiply by w itself, so they stay around 1."""
    multiplier = 1.0 if model.config.model_type in ("gemma4", "gemma4_text", "gemma4_unified", "embedding_gemma2",
                                                    "gemma3n", "gemma3n_text") else 0.0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or "scale" in pname:
                p.normal_(multiplier, 0.3)
            else:
                p.normal_(0.0, 0.15)
        for pname, b in model.named_buffers():
            if pname.endswith("layer_scalar"):
                b.normal_(1.0, 0.3)


def write_checkpoint(name: str, folder: Path, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> Path:
    """save_pretrained of the tiny model (transformers 5.x writes Gemma 4's per_layer_config form)."""
    model = hf_model(name, seed, **overrides).to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# Multimodal checkpoints: a tiny vision tower beside the decoder of a text config above, placeholder
# ids inside the tiny vocabulary. The export takes the decoder; transformers' model runs text alone.
MULTIMODAL = {"gemma3": "gemma3", "gemma4": "gemma4-shared"}
PLACEHOLDERS = {"gemma3": dict(image_token_index=380, boi_token_index=378, eoi_token_index=379),
                "gemma4": dict(image_token_id=380, boi_token_id=378, eoi_token_id=379, video_token_id=381,
                               audio_token_id=382, boa_token_id=383, eoa_token_index=377)}


def hf_multimodal_model(family: str, seed: int = 0):
    import transformers

    text_name = MULTIMODAL[family]
    text_family, extra = {**CONFIGS, **GEMMA4_CONFIGS}[text_name]
    if family == "gemma3":
        text = transformers.Gemma3TextConfig(**{**BASE, **extra})
        vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=28, patch_size=14)
        cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                        **PLACEHOLDERS[family])
        model_class = transformers.Gemma3ForConditionalGeneration
    else:
        # An image's tokens see each other on sliding layers (use_bidirectional_attention "vision").
        text = transformers.Gemma4TextConfig(**{**GEMMA4_BASE, **extra}, use_bidirectional_attention="vision")
        vision = transformers.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                                 patch_size=4, pooling_kernel_size=2, position_embedding_size=64)
        cfg = transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                                        **PLACEHOLDERS[family])
        model_class = transformers.Gemma4ForConditionalGeneration
    cfg.text_config._attn_implementation = "eager"
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_class(cfg).eval()
    randomise(model)
    return model


def hf_gemma3n_multimodal_model(seed: int = 0):
    """A tiny Gemma3nForConditionalGeneration around tests/tiny.py's "gemma3n" decoder with a real
    (tiny) audio tower and, timm not being installed, a one-layer stand-in for its MobileNet-V5
    vision tower (the export skips both towers; their tensors are only to be left unread)."""
    from unittest import mock

    import transformers
    from torch import nn
    from transformers.models.gemma3n import modeling_gemma3n

    text = transformers.Gemma3nTextConfig(**GEMMA3N_CONFIGS["gemma3n"][1])
    vision = transformers.Gemma3nVisionConfig(hidden_size=16, label_names=["a"])
    audio = transformers.Gemma3nAudioConfig(hidden_size=16, input_feat_size=8, conf_num_attention_heads=2,
                                            conf_num_hidden_layers=1, sscp_conv_channel_size=(4, 4))
    cfg = transformers.Gemma3nConfig(text_config=text, vision_config=vision, audio_config=audio)
    cfg.text_config._attn_implementation = "eager"
    build = modeling_gemma3n.AutoModel.from_config

    def tower(config, **kwargs):
        return nn.Linear(3, 16) if isinstance(config, transformers.Gemma3nVisionConfig) else build(config, **kwargs)

    torch.manual_seed(seed)
    with mock.patch.object(modeling_gemma3n.AutoModel, "from_config", tower):
        model = transformers.Gemma3nForConditionalGeneration(cfg).eval()
    randomise(model)
    return model


def hf_image_processor(family: str):
    """The image processor of the tiny multimodal checkpoints (their saved preprocessor_config.json)."""
    import transformers

    if family == "gemma3":
        return transformers.Gemma3ImageProcessorPil(size={"height": 28, "width": 28})
    return transformers.Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2)


def write_multimodal_checkpoint(family: str, folder: Path, seed: int = 0) -> Path:
    hf_multimodal_model(family, seed).save_pretrained(folder, safe_serialization=True)
    hf_image_processor(family).save_pretrained(folder)
    return folder


def placeholder_ids(family: str) -> tuple[int, int, int]:
    """(image token, begin-of-image, end-of-image) ids of the tiny multimodal checkpoints."""
    ph = PLACEHOLDERS[family]
    return tuple(ph.get(f"{k}_token_index", ph.get(f"{k}_token_id")) for k in ("image", "boi", "eoi"))


def two_image_prompt(family: str, rng) -> tuple[list[int], dict]:
    """A prompt with two random images of different sizes (Gemma 4: different token counts) as
    transformers' processor makes it: the expanded ids and the processor's arrays, token types
    included."""
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8))]
    image, boi, eoi = placeholder_ids(family)
    out = hf_image_processor(family)(images, return_tensors="np")
    arrays = {k: v for k, v in out.items() if k in ("pixel_values", "image_position_ids")}
    counts = [int(c) for c in out.get("num_soft_tokens_per_image", [4, 4])]
    ids = [2, 5, 6, boi] + [image] * counts[0] + [eoi, 7, 8, boi] + [image] * counts[1] + [eoi, 9, 10, 11]
    arrays["token_type_ids" if family == "gemma3" else "mm_token_type_ids"] = np.array([[int(i == image) for i in ids]])
    return ids, arrays
