"""lm_head only where logits are needed: a new input `logits_index` [batch, keep] (int64)
picks the positions whose logits are computed, before the final norm. Generation asks for each
row's last real token (1 of a 128-token prompt skips 127/128 of the vocab projection);
validation asks for every position."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_node, constant_int64
from gemma_graphs.roles import roles
from gemma_runtime.interface import BATCH, LOGITS_INDEX

NAME = "logits_index"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    final_norm = roles(ctx.config).final_norm
    norms = [n for n in graph if len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].name == final_norm]
    if len(norms) != 1:
        raise AssertionError(f"expected one final norm reading {final_norm}, found {len(norms)}")
    norm = norms[0]
    index = ir.Value(name=LOGITS_INDEX, shape=ir.Shape([BATCH, "keep"]), type=ir.TensorType(ir.DataType.INT64))
    graph.inputs.append(index)
    unsqueezed = add_node(graph, norm, "Unsqueeze", [index, constant_int64(graph, "const.last_axis", [-1])])
    picked = add_node(graph, norm, "GatherND", [norm.inputs[0], unsqueezed.outputs[0]], {"batch_dims": 1})
    norm.replace_input_with(0, picked.outputs[0])
    _seq_becomes_keep(graph, picked)
    logits = graph.outputs[0]
    logits.shape = ir.Shape(["batch", "keep", ctx.config.vocab_size])
    return 1


def _seq_becomes_keep(graph: ir.Graph, gather: ir.Node) -> None:
    """Every value computed from the gathered positions has `keep` rows, not the traced `seq`:
    onnxruntime plans its buffers by these shapes (and warns of each mismatch)."""
    reached = {gather.outputs[0]}
    for node in graph:
        if any(v in reached for v in node.inputs):
            for out in node.outputs:
                reached.add(out)
                if out.shape is not None:
                    out.shape = ir.Shape(["keep" if d == "seq" else d for d in out.shape])
