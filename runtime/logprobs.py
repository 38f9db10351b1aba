"""Log probabilities of tokens under the artifact's own logits (float32 rows, as the backend
returns them): log-softmax with the row's maximum subtracted and the sum of exponentials taken in
float64, so that a large vocabulary (262144 for Gemma 3) neither overflows nor loses the small
terms, without a float64 copy of the row. They are the artifact's: a quantized lm_head, or a
softcapped head, gives the logprobs of the logits it computes."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

MAX_TOP_LOGPROBS = 20  # as vLLM and OpenAI's chat API allow
_ROWS_AT_ONCE = 16  # bounds the float32 exponentials of a long prompt's rows held at once


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A token's logprob after some context, and the `top` most likely tokens there (most likely
    first; empty when none were asked for)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def log_normalizers(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) of each row of [rows, vocab] logits, in float64."""
    logits = np.asarray(logits, np.float32)
    out = np.empty(len(logits), np.float64)
    for start in range(0, len(logits), _ROWS_AT_ONCE):
        rows = logits[start:start + _ROWS_AT_ONCE]
        peak = rows.max(axis=-1, keepdims=True)
        out[start:start + len(rows)] = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=-1, dtype=np.float64))
    return out


def token_logprobs(logits: np.ndarray, tokens: Sequence[int], top: int = 0) -> list[TokenLogprob]:
    """tokens[i]'s logprob under row i of [rows, vocab] logits, with the `top` best of each row."""
    logits = np.asarray(logits, np.float32)
    if logits.ndim == 1:
        logits = logits[None]
    norms = log_normalizers(logits)
    rows = np.arange(len(tokens))
    chosen = logits[rows, np.asarray(tokens, np.int64)].astype(np.float64) - norms
    best: list[tuple[tuple[int, float], ...]] = [()] * len(tokens)
    if top > 0:
        # argmax for the top 1 (lm-eval's greedy check) is several times cheaper than a partition
        ids = logits.argmax(-1)[:, None] if top == 1 else np.argpartition(-logits, top - 1, axis=-1)[:, :top]
        values = np.take_along_axis(logits, ids, axis=-1)
        order = np.argsort(-values, axis=-1, kind="stable")
        ids, values = np.take_along_axis(ids, order, -1), np.take_along_axis(values, order, -1)
        best = [tuple((int(i), float(v) - norm) for i, v in zip(row_ids, row_values))
                for row_ids, row_values, norm in zip(ids, values.astype(np.float64), norms)]
    return [TokenLogprob(int(t), float(c), b) for t, c, b in zip(tokens, chosen, best)]
