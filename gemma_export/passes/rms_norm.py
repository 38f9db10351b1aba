"""GemmaRMSNorm -> SimplifiedLayerNormalization, with the norm's offset folded into the scale
(Gemma 1-3 store w zero-centred: gamma = 1 + w, written lazily; Gemma 4 stores gamma itself). The op is onnxruntime's own, registered in the ai.onnx
domain: the com.microsoft one has no CPU kernel. stash_type=1 keeps the statistics in fp32."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gemma_export.tensors import mapped
from gemma_export.frontend.onnx_ops import RMS_NORM
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, initializer_of, project_nodes, replace_value

NAME = "rms_norm"
AFTER = ("logits_index",)  # which finds the final norm by the weight name the lowering replaces


def run(model: ir.Model, ctx: PassContext) -> int:
    return lower_norms(model.graph, "SimplifiedLayerNormalization", ctx, NAME)


def lower_norms(graph: ir.Graph, op_type: str, ctx: PassContext, pass_name: str) -> int:
    """Every GemmaRMSNorm becomes `op_type`(X, offset + W) over the last axis with fp32 statistics
    (SimplifiedLayerNormalization and opset-23 RMSNormalization share these inputs and attributes).
    A norm whose weight is not stored is left alone: offset + W is folded into a stored weight."""
    count = 0
    for node in project_nodes(graph, RMS_NORM):
        weight = initializer_of(node.inputs[1])
        if weight is None:
            ctx.left_alone(pass_name, node.name, "its weight is not an initializer")
            continue
        gamma = offset_weight(graph, weight, node.attributes.get_float("offset"))
        norm = add_node(graph, node, op_type, [node.inputs[0], gamma],
                        {"axis": -1, "epsilon": node.attributes.get_float("epsilon"), "stash_type": 1})
        replace_value(node.outputs[0], norm.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def offset_weight(graph: ir.Graph, weight: ir.Value, offset: float) -> ir.Value:
    """The initializer offset + w (shared by every norm reading w); w itself at offset 0."""
    if offset == 0.0:
        return weight
    name = f"{weight.name}.plus_one" if offset == 1.0 else f"{weight.name}.plus_{offset:g}"
    if name in graph.initializers:
        return graph.initializers[name]
    return add_initializer(graph, name, mapped(weight.const_value,
                                               lambda w: (w.astype(np.float32) + offset).astype(w.dtype), name))
