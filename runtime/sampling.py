"""Next-token choice from one row of logits: greedy at temperature 0, else top-k / top-p sampling;
a logit bias (token id -> added to its logit, as OpenAI's logit_bias) applies first, to both."""

from __future__ import annotations

import copy

import numpy as np

from gemma_runtime.errors import RuntimeInputError


class Sampler:
    def __init__(self, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, logit_bias: dict[int, float] | None = None):
        if temperature < 0:
            raise RuntimeInputError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise RuntimeInputError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise RuntimeInputError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self._rng = np.random.default_rng(seed)
        bias = logit_bias or {}
        self._bias_ids = np.fromiter(bias.keys(), np.int64, len(bias))
        self._bias = np.fromiter(bias.values(), np.float32, len(bias))

    def reseeded(self, seed: int | None) -> Sampler:
        """The same settings with a generator of its own from seed."""
        other = copy.copy(self)
        other._rng = np.random.default_rng(seed)
        return other

    def __call__(self, logits: np.ndarray) -> int:
        if len(self._bias_ids):
            logits = np.array(logits, np.float32)
            np.add.at(logits, self._bias_ids, self._bias)
        if self.temperature == 0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / self.temperature
        if self.top_k is not None and self.top_k < x.size:
            kth = np.partition(x, -self.top_k)[-self.top_k]
            x = np.where(x < kth, -np.inf, x)
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        if self.top_p is not None and self.top_p < 1:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self._rng.choice(probs.size, p=probs))
