"""Traced head views `Reshape(x [B, S, H*D], Concat(B, S, H, D))` compute their target shape at run
time from Shape ops (about seven small nodes a view). When the output's shape is the input's
leading dims followed by constants, the target becomes the constant [0, 0, H, D] (0: keep that
dim), and the shape arithmetic goes dead. Gemma 3's QK-norm views are the ones left once the
attention is fused."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes import attention_gqa
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import constant_int64, initializer_of
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "constant_view_shapes"


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    # A fused attention takes the q/k/v views itself, but for QK-norm's and the standard-form layers'.
    return attention_gqa.NAME not in target.passes or config.qk_norm or bool(attention_gqa.standard_layers(config))


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    for node in graph:
        if node.op_type != "Reshape" or node.domain != "" or initializer_of(node.inputs[1]) is not None:
            continue
        target = _constant_target(node.inputs[0].shape, node.outputs[0].shape)
        if target is None:
            continue
        node.replace_input_with(1, constant_int64(graph, "const.view_" + "_".join(map(str, target)), target))
        node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)
        count += 1
    return count


def _constant_target(source: ir.Shape | None, result: ir.Shape | None) -> list[int] | None:
    if source is None or result is None:
        return None
    target = []
    for i, dim in enumerate(result):
        if i < source.rank() and not isinstance(dim, int) and dim == source[i]:
            target.append(0)
        elif isinstance(dim, int) and dim > 0:
            target.append(dim)
        else:
            return None
    return target
