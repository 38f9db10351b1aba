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
REQUIRES = ("rms_norm",)  # it fuses SimplifiedLayerNormalization
MS_DOMAIN = "com.microsoft"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    for norm in list(graph):
        if norm.op_type != "SimplifiedLayerNormalization" or norm.domain != "":
            continue
        add = norm.inputs[0].producer()
        reason = _unfusable(add)
        if reason is not None:
            ctx.left_alone(NAME, norm.name, reason)
            continue
        a, b = add.inputs
        skip = add_node(graph, add, "SkipSimplifiedLayerNormalization", [a, b, norm.inputs[1]],
                        {"epsilon": norm.attributes.get_float("epsilon")}, domain=MS_DOMAIN, num_outputs=4)
        replace_value(norm.outputs[0], skip.outputs[0])
        replace_value(add.outputs[0], skip.outputs[3])
        graph.remove([norm, add], safe=True)
        count += 1
    if count:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return count


def _unfusable(add: ir.Node | None) -> str | None:
    """Why the norm's input cannot be the kernel's input + skip, or None. The kernel takes a 3-D
    input and a same-shaped skip: no broadcasting, no constants."""
    if add is None or add.op_type != "Add" or add.domain != "":
        return "its input is not an Add"
    a, b = add.inputs
    if initializer_of(a) or initializer_of(b):
        return "the Add has a constant operand"
    if a.shape is None or b.shape is None:
        return "the Add's operand shapes are unknown"
    if a.shape != b.shape:
        return "the Add broadcasts (its operands differ in shape)"
    if a.shape.rank() != 3:
        return f"the Add is {a.shape.rank()}-D, not 3-D"
    return None
