"""Residual Add + SimplifiedLayerNormalization -> com.microsoft SkipSimplifiedLayerNormalization,
whose fourth output is the sum (the residual stream carried on). In Gemma 2/3's sandwich
`x + post_norm(attn)` -> `pre_ffw_norm`, the post norm stays a SimplifiedLayerNormalization and
the add fuses into the pre-FFW norm (and likewise after the MLP into the next layer's input norm):
no kernel normalises before and after an add in one op."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_node, initializer_of, replace_value

NAME = "skip_rms_norm"
MS_DOMAIN = "com.microsoft"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    for norm in list(graph):
        if norm.op_type != "SimplifiedLayerNormalization" or norm.domain != "":
            continue
        add = norm.inputs[0].producer()
        if add is None or add.op_type != "Add" or add.domain != "":
            continue
        a, b = add.inputs
        # The kernel takes a 3-D input and a same-shaped skip: no broadcasting, no constants.
        if initializer_of(a) or initializer_of(b) or a.shape is None or a.shape != b.shape or a.shape.rank() != 3:
            continue
        skip = add_node(graph, add, "SkipSimplifiedLayerNormalization", [a, b, norm.inputs[1]],
                        {"epsilon": norm.attributes.get_float("epsilon")}, domain=MS_DOMAIN, num_outputs=4)
        replace_value(norm.outputs[0], skip.outputs[0])
        replace_value(add.outputs[0], skip.outputs[3])
        graph.remove([norm, add], safe=True)
        count += 1
    if count:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return count
