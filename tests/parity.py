"""Checks shared by the parity tests: an artifact's logits against transformers'."""

from __future__ import annotations

import numpy as np
import torch

from gemma_export.verify.compare import fp32_failures


def hf_logits(hf_model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].float().numpy()


def assert_fp32_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    """The fp32 rule (gemma_export/verify/compare.py): max |diff| <= 1e-4 x max |logit|, argmax
    equal wherever the reference's top-2 margin exceeds that tolerance."""
    failures = fp32_failures(ours, ref)
    assert not failures, "; ".join(failures)


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
