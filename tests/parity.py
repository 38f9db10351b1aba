"""Checks shared by the parity tests: an artifact's logits against transformers'."""

from __future__ import annotations

import numpy as np
import torch

RELATIVE_TOLERANCE = 1e-4


def hf_logits(hf_model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].float().numpy()


def assert_fp32_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    """max |diff| <= 1e-4 x max |logit|, argmax equal wherever the reference's top-2 margin
    exceeds that tolerance."""
    assert ours.shape == ref.shape
    tol = RELATIVE_TOLERANCE * np.abs(ref).max()
    diff = np.abs(ours - ref).max()
    assert diff <= tol, f"max |diff| {diff:.3g} > {tol:.3g}"
    top2 = np.sort(ref, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > tol
    agree = ours.argmax(-1) == ref.argmax(-1)
    assert agree[decided].all(), f"argmax differs at positions {np.flatnonzero(decided & ~agree)}"


def prompt(seed: int, length: int, vocab: int = 384) -> list[int]:
    return [2, *np.random.default_rng(seed).integers(3, vocab, size=length - 1).tolist()]


def stepwise_logits(model, ids: list[int], prefill: int) -> np.ndarray:
    """Logits of positions prefill-1 .. len-1: prefill, then one token at a time through the cache."""
    backend = model.backend
    backend.reserve(1)
    out = [backend.step([ids[:prefill]], [0], [prefill])[:, 0]]
    for t in range(prefill, len(ids)):
        out.append(backend.step([[ids[t]]], [t], [1])[:, 0])
    return np.concatenate(out, axis=0)
