"""Every project-domain node (GemmaRMSNorm, GemmaRoPE, GemmaGeGLU, GemmaAttention) replaced by its
function body, then the bodies and the project's opset import dropped: a graph of standard ops
(MatMul/Softmax attention with an explicit mask, RoPE from Cos/Sin/Slice/Concat, RMSNorm from
ReduceMean/Sqrt) for runtimes that do not inline local functions, OpenVINO among
them. Acts on targets that inline (Target.inlines_functions) and where --inline-functions asks."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass, RemoveUnusedOpsetsPass

from gemma_export.frontend.onnx_ops import DOMAIN
from gemma_export.passes.context import PassContext
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "inline_functions"


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return target.inlines_functions or options.inline_functions


def run(model: ir.Model, ctx: PassContext) -> int:
    calls = sum(1 for node in model.graph if node.domain == DOMAIN)
    InlinePass()(model)  # removes the inlined functions too
    RemoveUnusedOpsetsPass()(model)
    return calls
