"""Raise the default-domain opset of the graph and of every function body to 24, the opset of
`TensorScatter` (RMSNormalization, RotaryEmbedding and Attention are opset 23). Only the version
numbers change: opsets 21-24 added types to the traced graph's ops, never changed what they compute."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes import attention_gqa
from gemma_export.passes.context import PassContext
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "set_opset"
OPSET = 24
IR_VERSION = 12  # the IR version that introduced opset 24


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    # a fused attention needs it only for the layers it keeps in the standard form
    return attention_gqa.NAME not in target.passes or bool(attention_gqa.standard_layers(config))


def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for owner in [model, *model.functions.values()]:
        if owner.opset_imports.get("", 0) < OPSET:
            owner.opset_imports[""] = OPSET
            count += 1
    model.ir_version = max(model.ir_version, IR_VERSION)
    return count
