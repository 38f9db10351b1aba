"""GemmaRMSNorm -> SimplifiedLayerNormalization, with Gemma's zero-centred weight folded into
the scale (gamma = 1 + w, written lazily). The op is onnxruntime's own, registered in the ai.onnx
domain: the com.microsoft one has no CPU kernel. stash_type=1 keeps the statistics in fp32."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gemma_export.tensors import mapped
from gemma_export.frontend.onnx_ops import RMS_NORM
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, initializer_of, project_nodes, replace_value

NAME = "rms_norm"


def run(model: ir.Model, ctx: PassContext) -> int:
    return lower_norms(model.graph, "SimplifiedLayerNormalization")


def lower_norms(graph: ir.Graph, op_type: str) -> int:
    """Every GemmaRMSNorm becomes `op_type`(X, 1 + W) over the last axis with fp32 statistics
    (SimplifiedLayerNormalization and opset-23 RMSNormalization share these inputs and attributes)."""
    count = 0
    for node in project_nodes(graph, RMS_NORM):
        weight = initializer_of(node.inputs[1])
        if weight is None:
            raise AssertionError(f"{node.name}: the norm weight is not an initializer")
        norm = add_node(graph, node, op_type, [node.inputs[0], one_plus(graph, weight)],
                        {"axis": -1, "epsilon": node.attributes.get_float("epsilon"), "stash_type": 1})
        replace_value(node.outputs[0], norm.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def one_plus(graph: ir.Graph, weight: ir.Value) -> ir.Value:
    """The initializer 1 + w (shared by every norm reading w)."""
    name = f"{weight.name}.plus_one"
    if name in graph.initializers:
        return graph.initializers[name]
    return add_initializer(graph, name, mapped(weight.const_value, lambda w: (w.astype(np.float32) + 1).astype(w.dtype), name))
