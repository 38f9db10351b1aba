"""The in-place KV-cache interface shared by the targets whose cache is one static buffer per
layer, updated in place (`onnx`, `ort-cpu`, `ort-cuda`); the contract itself is written in
runtime/interface.py.

Only the graph's inputs and outputs change here: `attention_mask` goes, `past_lengths` and
`seq_lengths` [batch] come in, and every cache input and output (the model's cache slots,
ctx.caches) gets the static shape [batch, kv_heads, max_seq_len, head_dim]. Each GemmaAttention node loses its mask input and keeps
reading its cache input and producing its cache output: the target's attention pass, which must
follow, gives it in-place meaning (write the new keys at past_lengths, attend to the first
past_lengths + seq_lengths positions) from the two lengths (`lengths()`).
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.frontend.onnx_ops import ATTENTIONS
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import project_nodes
from gemma_runtime.interface import ATTENTION_MASK, BATCH, INPUT_IDS, PAST_LENGTHS, SEQ_LENGTHS

NAME = "inplace_cache_io"
UNRUNNABLE_UNTIL = ("attention_gqa", "attention_onnx")  # they give the static caches their in-place meaning
MASK_INPUT = 5  # GemmaAttention's attention_mask (GemmaBlockAttention's lookahead follows it)


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    mask = _input(graph, ATTENTION_MASK)
    for node in attention_nodes(graph):
        node.replace_input_with(MASK_INPUT, None)
    input_ids = _input(graph, INPUT_IDS)
    for node, index in list(mask.uses()):  # the trace may read the batch size off the mask: same as the ids'
        if node.op_type == "Shape" and node.attributes.get_int("start", 0) == 0 and node.attributes.get_int("end", 2) == 1:
            node.replace_input_with(index, input_ids)
    if mask.uses():
        raise AssertionError(f"attention_mask is still read by {[user.op_type for user, _ in mask.uses()]}")
    at = graph.inputs.index(mask)
    graph.inputs[at:at + 1] = [
        ir.Value(name=name, shape=ir.Shape([BATCH]), type=ir.TensorType(ir.DataType.INT64))
        for name in (PAST_LENGTHS, SEQ_LENGTHS)]
    values = {v.name: v for v in [*graph.inputs, *graph.outputs]}
    count = 0
    for slot in ctx.caches:
        for name in (slot.input_name, slot.output_name):
            value = values[name]
            value.shape = ir.Shape(["batch", value.shape[1], ctx.options.max_seq_len, value.shape[3]])
            count += 1
    return count


def attention_nodes(graph: ir.Graph) -> list[ir.Node]:
    return project_nodes(graph, ATTENTIONS)


def lengths(graph: ir.Graph) -> tuple[ir.Value, ir.Value]:
    """The graph inputs past_lengths and seq_lengths (this pass must have run)."""
    return _input(graph, PAST_LENGTHS), _input(graph, SEQ_LENGTHS)


def _input(graph: ir.Graph, name: str) -> ir.Value:
    for value in graph.inputs:
        if value.name == name:
            return value
    raise AssertionError(f"the graph has no input {name!r}")
