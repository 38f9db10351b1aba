"""The one fp32 rule, shared by validate, bisect and the tests: an fp32 export's logits stay within
FP32_RELATIVE_TOLERANCE x max |reference logit| of the reference's, and its argmax is the
reference's wherever the reference's top-2 margin exceeds that tolerance (elsewhere either token
is a correct answer). Also the statistics validate reports for any precision."""

from __future__ import annotations

import dataclasses

import numpy as np

FP32_RELATIVE_TOLERANCE = 1e-4  # clean fp32 exports stay below 2e-6


@dataclasses.dataclass
class Diff:
    max_abs_diff: float
    relative: float  # max |diff| / max |reference|

    @classmethod
    def of(cls, ours: np.ndarray, ref: np.ndarray) -> Diff:
        ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
        if ours.shape != ref.shape:
            return cls(float("inf"), float("inf"))
        diff = float(np.abs(ours - ref).max()) if ours.size else 0.0
        diff = diff if np.isfinite(diff) else float("inf")
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        return cls(diff, diff / scale if scale else (0.0 if diff == 0 else float("inf")))

    def to_json(self) -> dict:
        """inf and nan as strings (JSON has no numbers for them)."""
        return {k: v if np.isfinite(v) else str(v) for k, v in dataclasses.asdict(self).items()}


def decided(ref: np.ndarray, tolerance: float) -> np.ndarray:
    """The positions whose reference top-2 margin exceeds `tolerance` (an absolute logit difference)."""
    top2 = np.sort(ref, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) > tolerance


def fp32_failures(ours: np.ndarray, ref: np.ndarray) -> list[str]:
    """What breaks the fp32 rule (empty: the logits pass it)."""
    if ours.shape != ref.shape:
        return [f"logits of shape {ours.shape}, the reference's {ref.shape}"]
    tol = FP32_RELATIVE_TOLERANCE * np.abs(ref).max()
    diff = np.abs(ours - ref).max()
    failures = [] if diff <= tol else [f"max |diff| {diff:.3g} > {tol:.3g}"]
    wrong = decided(ref, tol) & (ours.argmax(-1) != ref.argmax(-1))
    if wrong.any():
        failures.append(f"argmax differs at positions {np.flatnonzero(wrong)}")
    return failures


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare(ours: np.ndarray, ref: np.ndarray, ids: list[int]) -> dict:
    """One prompt's teacher-forced logits [positions, vocab] against the reference's: the sums
    validate's summary adds up over prompts."""
    diff = np.abs(ours.astype(np.float64) - ref)
    sure = decided(ref, FP32_RELATIVE_TOLERANCE * float(np.abs(ref).max()))
    agree = ours.argmax(-1) == ref.argmax(-1)
    top5 = np.argsort(-ours, axis=-1)[:, :5]
    lp_ref, lp_ours = _log_softmax(ref), _log_softmax(ours)
    kl = (np.exp(lp_ref) * (lp_ref - lp_ours)).sum(-1)
    targets = np.asarray(ids[1:])
    nll_ours = -lp_ours[np.arange(len(targets)), targets] if len(targets) else np.zeros(0)
    nll_ref = -lp_ref[np.arange(len(targets)), targets] if len(targets) else np.zeros(0)
    return {
        "positions": len(ids), "max_abs_diff": float(diff.max()), "sum_abs_diff": float(diff.sum()),
        "max_abs_ref": float(np.abs(ref).max()), "top1_agree": int(agree.sum()),
        "decided": int(sure.sum()), "decided_agree": int((agree & sure).sum()),
        "top5_hit": int((top5 == ref.argmax(-1)[:, None]).any(-1).sum()),
        "kl_sum": float(kl.sum()), "nll_ours": float(nll_ours.sum()), "nll_ref": float(nll_ref.sum()),
        "vocab": int(ref.shape[-1]),
    }
