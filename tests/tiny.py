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


def hf_model(name: str, seed: int = 0):
    import transformers

    family, extra = CONFIGS[name]
    kw = {**BASE, **extra}
    if family == "gemma":
        cfg, cls = transformers.GemmaConfig(**kw), transformers.GemmaForCausalLM
    elif family == "gemma2":
        cfg, cls = transformers.Gemma2Config(**kw), transformers.Gemma2ForCausalLM
    else:
        cfg, cls = transformers.Gemma3TextConfig(**kw), transformers.Gemma3ForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.15)
    return model


def write_checkpoint(name: str, folder: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    model = hf_model(name, seed).to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
