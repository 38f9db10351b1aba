"""Parity of an artifact against a reference: a checkpoint (run through the fp32 torch module in
graphs/) or another artifact. Teacher-forced logits over a prompt set (compare.py), plus greedy decoding."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gemma_export.errors import GemmaExportError
from gemma_export.quantization.method import QuantMethod
from gemma_export.texts import PROMPTS
from gemma_export.verify.compare import FP32_RELATIVE_TOLERANCE, compare
from gemma_runtime.manifest import MANIFEST_FILE, Manifest
from gemma_runtime.tokenizer import Tokenizer

# Minimum teacher-forced top-1 agreement by precision (a quantization method's: QuantMethod.precision);
# fp32 is held to compare.py's rule instead.
TOP1_THRESHOLDS = {"fp16": 0.99, "bf16": 0.99, "int8": 0.98, "int4": 0.90, "source": 0.95}


@dataclasses.dataclass
class Thresholds:
    max_rel_diff: float | None  # max |diff| <= this x max |ref logit| (fp32)
    min_top1: float  # agreement where the reference's top-2 margin exceeds the tolerance (fp32) or overall


def default_thresholds(manifest: Manifest) -> Thresholds:
    method = QuantMethod.parse(manifest.quant["method"])
    if method.quantizes:
        return Thresholds(None, TOP1_THRESHOLDS[method.precision])
    if manifest.dtype != "fp32":
        return Thresholds(None, TOP1_THRESHOLDS[manifest.dtype])
    return Thresholds(FP32_RELATIVE_TOLERANCE, 1.0)


LogitsFn = Callable[[list[int]], np.ndarray]


def reference_logits_fn(reference: Path | str | None) -> tuple[LogitsFn, str]:
    """Teacher-forced logits of a reference: an artifact folder or a checkpoint source."""
    ref = Path(reference) if reference is not None else None
    if ref is not None and (ref / MANIFEST_FILE).is_file():
        import gemma_runtime
        other = gemma_runtime.load(ref)
        return other.logits, f"artifact {ref}"
    from gemma_export.checkpoints import open_source
    from gemma_graphs.gemma import load_reference

    source = open_source(ref)
    module = load_reference(source.config, source.weights)

    def run(ids: list[int]) -> np.ndarray:
        return reference_prefill(module, source.config, ids)[0][0].numpy()

    return run, f"fp32 torch reference of {source.description}"


def reference_prefill(module, cfg, ids: list[int]):
    """The fp32 torch reference (gemma_graphs.gemma.load_reference) run over ids from empty caches,
    each shaped as its cache slot (Gemma 4's global layers have their own heads and head dim):
    (logits [1, n, vocab], [the residual stream after each layer, [1, n, hidden]])."""
    import torch

    from gemma_graphs.gemma import cache_tensors

    n = len(ids)
    caches = [torch.zeros(1, s.kv_heads, 0, s.head_dim) for s in cache_tensors(cfg)]
    media = (torch.zeros(1, 0, cfg.hidden_size), torch.zeros(1, 0, dtype=torch.int64),  # text only: nothing spliced
             torch.zeros(1, n, dtype=torch.int64)) if cfg.media_inputs else ()
    with torch.no_grad():
        return module.hidden_states(torch.tensor([ids]), torch.arange(n)[None], torch.ones(1, n, dtype=torch.int64),
                                    *media, *caches)


def prompt_ids(model, texts: Sequence[str] | None, vocab: int) -> list[list[int]]:
    """Token ids to evaluate: the texts through the artifact's tokenizer, or (no tokenizer)
    seeded random ids, BOS first."""
    return token_ids(model.tokenizer, model.manifest.tokens.bos, model.max_seq_len, texts, vocab,
                     set(model.placeholder_ids))


def token_ids(tokenizer: Tokenizer | None, bos: int, limit: int, texts: Sequence[str] | None,
              vocab: int, placeholders: set[int] = frozenset()) -> list[list[int]]:
    """prompt_ids() from the tokenizer (or None), BOS id and length limit alone; random ids are
    never a multimodal model's placeholders (text prompts have none)."""
    texts = list(texts or PROMPTS)
    if tokenizer is not None:
        return [tokenizer.encode(t)[:limit] for t in texts]
    rng = np.random.default_rng(0)
    prompts = [[bos, *rng.integers(3, vocab, size=min(24 + 7 * i, limit - 1)).tolist()] for i in range(len(texts))]
    return [[bos if t in placeholders else t for t in ids] for ids in prompts]


def greedy(logits_fn: LogitsFn, ids: list[int], n: int, stop: set[int]) -> list[int]:
    """Greedy continuation by repeated teacher-forced passes (works for any reference)."""
    ids, out = list(ids), []
    for _ in range(n):
        t = int(logits_fn(ids)[-1].argmax())
        if t in stop:
            break
        out.append(t)
        ids.append(t)
    return out


def validate(artifact: Path | str, reference: Path | str | None, texts: Sequence[str] | None = None,
             thresholds: Thresholds | None = None, greedy_tokens: int = 16,
             progress: Callable[[int, int], None] | None = None) -> dict:
    import gemma_runtime

    model = gemma_runtime.load(artifact)
    model.require_decoder()  # an embedding model's parity is its tests' (against sentence-transformers)
    manifest = model.manifest
    thresholds = thresholds or default_thresholds(manifest)
    ref_fn, ref_desc = reference_logits_fn(reference)
    vocab = manifest.config["vocab_size"]
    prompts = prompt_ids(model, texts, vocab)
    rows = []
    greedy_match = greedy_total = 0
    for i, ids in enumerate(prompts):
        ours, ref = model.logits(ids), ref_fn(ids)
        if ours.shape != ref.shape:
            raise GemmaExportError(f"reference logits have shape {ref.shape}, artifact {ours.shape}")
        rows.append(compare(ours, ref, ids))
        head = ids[: max(2, len(ids) // 2)]
        new_tokens = min(greedy_tokens, model.max_seq_len - len(head))
        a = model.generate(head, max_new_tokens=new_tokens).token_ids
        b = greedy(ref_fn, head, new_tokens, model.stop_ids)
        same = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        greedy_match += same
        greedy_total += max(len(a), len(b))
        if progress:
            progress(i + 1, len(prompts))
    return _summary(rows, thresholds, manifest, ref_desc, greedy_match, greedy_total, str(artifact))


def _summary(rows, thresholds: Thresholds, manifest, ref_desc, greedy_match, greedy_total, artifact) -> dict:
    positions = sum(r["positions"] for r in rows)
    targets = sum(r["positions"] - 1 for r in rows)
    max_abs_ref = max(r["max_abs_ref"] for r in rows)
    decided = sum(r["decided"] for r in rows)
    s = {
        "artifact": artifact, "reference": ref_desc, "target": manifest.target, "dtype": manifest.dtype,
        "quant": manifest.quant["method"], "prompts": len(rows), "positions": positions,
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "mean_abs_diff": sum(r["sum_abs_diff"] for r in rows) / (positions * rows[0]["vocab"]),
        "max_abs_ref_logit": max_abs_ref,
        "top1_agreement": sum(r["top1_agree"] for r in rows) / positions,
        "top1_agreement_decided": (sum(r["decided_agree"] for r in rows) / decided) if decided else 1.0,
        "top5_agreement": sum(r["top5_hit"] for r in rows) / positions,
        "kl_divergence": sum(r["kl_sum"] for r in rows) / positions,
        "perplexity": float(np.exp(sum(r["nll_ours"] for r in rows) / max(targets, 1))),
        "reference_perplexity": float(np.exp(sum(r["nll_ref"] for r in rows) / max(targets, 1))),
        "greedy_tokens_matched": greedy_match, "greedy_tokens_total": greedy_total,
        "thresholds": dataclasses.asdict(thresholds),
    }
    failures = []
    if thresholds.max_rel_diff is not None:
        limit = thresholds.max_rel_diff * max_abs_ref
        if s["max_abs_diff"] > limit:
            failures.append(f"max |diff| {s['max_abs_diff']:.3g} > {limit:.3g}")
        if s["top1_agreement_decided"] < thresholds.min_top1:
            failures.append(f"top-1 agreement {s['top1_agreement_decided']:.4f} < {thresholds.min_top1}")
    elif s["top1_agreement"] < thresholds.min_top1:
        failures.append(f"top-1 agreement {s['top1_agreement']:.4f} < {thresholds.min_top1}")
    s["passed"] = not failures
    s["failures"] = failures
    return s
