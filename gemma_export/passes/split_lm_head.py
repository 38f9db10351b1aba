"""The tied lm_head as vocabulary slices: `Gemm(h, E, transB=1)` becomes one Gemm per slice of
at most SLICE_BYTES of E's rows, their logits concatenated.

Why: onnxruntime prepacks a Gemm's weight into a copy of its own and keeps the original for the
token lookup, so at load the whole table was resident twice (2B-shaped model: 5.9 GB peak for
3.7 GB of weights). Each slice is an initializer of its own that points into the table's bytes
in model.onnx.data (tensors.row_view: the file still holds the table once); onnxruntime
prepacks one slice at a time and drops its original, while the lookup's table stays memory-
mapped and paged in only where rows are read. Runs last, on an lm_head still in float: the
quantized lm_head (MatMulNBits sharing its bytes with GatherBlockQuantized) is left as it is.
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.tensors import row_view
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, initializer_of, replace_value
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig
from gemma_graphs.roles import roles

NAME = "split_lm_head"
REQUIRES = ("tied_lm_head",)  # whose Gemm it splits
AFTER = ("quantize_embedding", "precision")  # it splits the lm_head they leave in float
SLICE_BYTES = 128 * 2**20
FP32_BYTES = 4


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return config.vocab_size * config.hidden_size * FP32_BYTES > SLICE_BYTES  # the table at its largest


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    embedding = roles(ctx.config).embedding
    for node in list(graph):
        table = initializer_of(node.inputs[1]) if node.op_type == "Gemm" and len(node.inputs) == 2 else None
        if table is None or table.name != embedding or node.attributes.get_int("transB", 0) != 1:
            continue
        vocab = table.shape[0]
        rows = max(1, SLICE_BYTES // (table.const_value.nbytes // vocab))
        if rows >= vocab:
            ctx.left_alone(NAME, node.name, f"the table ({table.const_value.nbytes} bytes) fits one slice")
            return 0
        logits = []
        for i, start in enumerate(range(0, vocab, rows)):
            stop = min(vocab, start + rows)
            name = f"lm_head.rows_{start}_{stop}"
            weight = add_initializer(graph, name, row_view(table, start, stop, name))
            logits.append(add_node(graph, node, "Gemm", [node.inputs[0], weight], {"transB": 1},
                                   name=f"lm_head.{i}").outputs[0])
        joined = add_node(graph, node, "Concat", logits, {"axis": 1})
        replace_value(node.outputs[0], joined.outputs[0])
        graph.remove(node, safe=True)
        return len(logits)
    ctx.left_alone(NAME, embedding, "no float Gemm reads the table (the lm_head is quantized)")
    return 0
