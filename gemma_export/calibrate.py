"""The calibration token ids every measuring pass reads, and the graph being compiled run by
onnxruntime over them (gemma_export/ort_run.py), for the pass that acts on the graph's own
activations (precision: the largest |value| of each tensor). (The decisions that rest on a
model-level measurement, --calibrate's scales and the recipes' sensitivities, run the model in
float64 instead: gemma_export/quantization/float64_reference.py.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx_ir as ir

from gemma_export import ort_run
from gemma_export.passes.context import PassContext
from gemma_export.texts import CALIBRATION

RANDOM_SEQUENCES, RANDOM_LENGTH = 6, 48  # without a tokenizer: seeded random ids


def sequences(ctx: PassContext) -> list[list[int]]:
    """Token ids of the calibration text (BOS first), or seeded random ids when the source has no
    tokenizer; each at most max_seq_len long."""
    cfg, limit = ctx.config, ctx.options.max_seq_len
    if ctx.tokenizer is not None:
        return [ctx.tokenizer.encode(text)[:limit] for text in CALIBRATION]
    rng = np.random.default_rng(0)
    return [[cfg.bos_token_id, *rng.integers(3, cfg.vocab_size, RANDOM_LENGTH - 1).tolist()][:limit]
            for _ in range(RANDOM_SEQUENCES)]


def prefills(model: ir.Model, ctx: PassContext) -> Iterator[dict[str, np.ndarray]]:
    """The graph's feeds for each calibration sequence: one prefill from an empty cache."""
    return (ort_run.prefill_feeds(model.graph, ids) for ids in sequences(ctx))


def largest(model: ir.Model, feeds: Iterable[dict[str, np.ndarray]], values: list[ir.Value]) -> Iterator[np.ndarray]:
    """For each feed, the largest |element| of each given value as onnxruntime computes it in the
    graph as it stands."""
    with tempfile.TemporaryDirectory(prefix="gemma-calibration-") as tmp:
        folder = Path(tmp)
        measure = ort_run.magnitudes(ort_run.model_proto(model, ort_run.TensorFile(folder)), [v.name for v in values],
                                     folder, threads=os.cpu_count() or 1)
        for feed in feeds:
            yield measure(feed)
