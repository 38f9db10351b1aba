"""GemmaRMSNorm(X, W; epsilon) -> RMSNormalization(X, 1 + W) (opset 23) over the last axis with
fp32 statistics (stash_type 1), as Gemma computes them; the 1 + w is folded into the stored
weight (checkpoints keep it zero-centred)."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.rms_norm import lower_norms

NAME = "rms_normalization"


def run(model: ir.Model, ctx: PassContext) -> int:
    return lower_norms(model.graph, "RMSNormalization")
