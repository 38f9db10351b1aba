"""The tied lm_head reads the embedding as it is stored: `MatMul(h, Transpose(E))` becomes
`Gemm(h2d, E, transB=1)`, so no runtime ever folds the Transpose into a second copy of the
largest tensor (onnxruntime-genai's builder transposes it on every step)."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_node, constant_int64, initializer_of, replace_value
from gemma_graphs.roles import roles

NAME = "tied_lm_head"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    embedding = roles(ctx.config).embedding
    count = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain != "":
            continue
        producer = node.inputs[1].producer()
        if producer is None or producer.op_type != "Transpose":
            continue
        weight = initializer_of(producer.inputs[0])
        if weight is None or weight.name != embedding:
            continue
        hidden = ctx.config.hidden_size
        h = node.inputs[0]
        flat = add_node(graph, node, "Reshape", [h, constant_int64(graph, "const.flat_hidden", [-1, hidden])])
        gemm = add_node(graph, node, "Gemm", [flat.outputs[0], weight], {"transB": 1}, name="lm_head")
        lead = add_node(graph, node, "Shape", [h], {"start": 0, "end": -1})
        shape = add_node(graph, node, "Concat", [lead.outputs[0], constant_int64(graph, "const.vocab", [ctx.config.vocab_size])], {"axis": 0})
        out = add_node(graph, node, "Reshape", [gemm.outputs[0], shape.outputs[0]])
        replace_value(node.outputs[0], out.outputs[0])
        count += 1
    return count
