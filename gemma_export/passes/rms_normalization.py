"""GemmaRMSNorm(X, W; epsilon, offset) -> RMSNormalization(X, offset + W) (opset 23) over the last axis with
fp32 statistics (stash_type 1), as Gemma computes them; Gemma 1-3's 1 + w is folded into the
stored weight (their checkpoints keep it zero-centred; Gemma 4's offset is 0)."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.rms_norm import lower_norms

NAME = "rms_normalization"
REQUIRES = ("set_opset",)  # RMSNormalization is opset 23
AFTER = ("logits_index",)  # which finds the final norm by the weight name the lowering replaces


def run(model: ir.Model, ctx: PassContext) -> int:
    return lower_norms(model.graph, "RMSNormalization", ctx, NAME)
