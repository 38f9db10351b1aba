"""`Transpose(W)` of a weight becomes a weight stored transposed ([in, out] for MatMul), written
in that layout at export time instead of transposed by the runtime at load."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.tensors import transposed
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, initializer_of, replace_value

NAME = "fold_weight_transposes"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    folded: dict[str, ir.Value] = {}  # a module called twice (Gemma 3n's AltUp router) transposes its weight twice
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain != "":
            continue
        weight = initializer_of(node.inputs[0])
        perm = node.attributes.get_ints("perm")
        if weight is None or list(perm or []) != [1, 0]:
            continue
        if any(user.op_type != "Transpose" for user, _ in weight.uses()):
            continue  # also read untransposed: a second copy would cost memory
        new = folded.get(weight.name)
        if new is None:
            new = add_initializer(graph, weight.name + ".T", transposed(weight.const_value, weight.name + ".T"))
            folded[weight.name] = new
        replace_value(node.outputs[0], new)
        graph.remove(node, safe=True)
        count += 1
    return count
