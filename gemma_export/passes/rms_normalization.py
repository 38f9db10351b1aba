"""GemmaRMSNorm(X, W; epsilon) -> RMSNormalization(X, 1 + W) (opset 23) over the last axis with
fp32 statistics (stash_type 1), as Gemma computes them; the 1 + w is folded into the stored
weight (checkpoints keep it zero-centred)."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.frontend.onnx_ops import DOMAIN, RMS_NORM
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_node, initializer_of, replace_value
from gemma_export.passes.rms_norm import one_plus

NAME = "rms_normalization"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.domain != DOMAIN or node.op_type != RMS_NORM:
            continue
        weight = initializer_of(node.inputs[1])
        if weight is None:
            raise AssertionError(f"{node.name}: the norm weight is not an initializer")
        norm = add_node(graph, node, "RMSNormalization", [node.inputs[0], one_plus(graph, weight)],
                        {"axis": -1, "epsilon": node.attributes.get_float("epsilon"), "stash_type": 1})
        replace_value(node.outputs[0], norm.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count
