"""Tiny Gemma 3 checkpoints for the low-precision tests.

`peaked`: the tiny gemma3 with its (tied) embedding scaled by 3, so that each position's top-1 has a
margin, as a trained model's often has (on the plain random checkpoint the top two logits are so
close that even bf16 weight rounding flips 1.6% of them), and a few outlier channels in the
pre-attention and pre-MLP norms, as trained transformers have: the activations that activation-aware
scaling exists for (on the plain random checkpoint it has nothing to act on).
`huge_residual`: `peaked` with the post-FFW norm weights of layers 1 and up scaled by 5e4 (still
within fp16's range), so that the residual stream they add to passes 65504 (the real Gemma 3 270M's residual
peaks at 1.04e5).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import hf_model

EMBEDDING_SCALE = 3.0
OUTLIER_CHANNELS, OUTLIER_WEIGHT = 3, 8.0  # norm scale 1 + w = 9 on the first channels
RESIDUAL_SCALE = 5e4


def write(folder: Path, huge_residual: bool = False) -> Path:
    model = hf_model("gemma3")
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(EMBEDDING_SCALE)
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.pre_feedforward_layernorm):
                norm.weight[:OUTLIER_CHANNELS] = OUTLIER_WEIGHT
        for layer in model.model.layers[1:] if huge_residual else []:
            layer.post_feedforward_layernorm.weight.mul_(RESIDUAL_SCALE)
    model.save_pretrained(folder)
    return folder
