"""For targets that promise no project-domain node: drop the project's function bodies and its
opset import. A GemmaX node still in the graph means a lowering pass is missing: an error."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedOpsetsPass

from gemma_export.frontend.onnx_ops import DOMAIN
from gemma_export.passes.context import PassContext

NAME = "drop_project_domain"
AFTER = ("attention_gqa", "attention_onnx", "rms_norm", "rms_normalization", "rotary_embedding", "geglu")


def run(model: ir.Model, ctx: PassContext) -> int:
    left = sorted({n.op_type for n in model.graph if n.domain == DOMAIN})
    if left:
        raise AssertionError(f"target {ctx.options.target!r}: no pass lowered {', '.join(left)}")
    before = len(model.functions)
    RemoveUnusedFunctionsPass()(model)
    RemoveUnusedOpsetsPass()(model)
    return before - len(model.functions)
