"""GemmaGeGLU(gate, up) -> Gelu(gate, approximate='tanh') * up.

Gelu-20 rather than com.microsoft FastGelu: onnxruntime's CPU provider gives bit-identical
results at the same speed for both, and the standard op keeps the graph readable by other tools."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.frontend.onnx_ops import GEGLU
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_node, project_nodes, replace_value

NAME = "geglu"
GELU_OPSET = 20


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    opset = model.opset_imports.get("", 0)
    for node in project_nodes(graph, GEGLU):
        if opset < GELU_OPSET:
            ctx.left_alone(NAME, node.name, f"the graph's opset {opset} has no Gelu (opset {GELU_OPSET})")
            continue
        gate, up = node.inputs
        gelu = add_node(graph, node, "Gelu", [gate], {"approximate": "tanh"})
        out = add_node(graph, node, "Mul", [gelu.outputs[0], up])
        replace_value(node.outputs[0], out.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count
