"""`--quant` for the tied embedding, both its uses: the token lookup and the lm_head
(Gemm(h, E, transB=1) after tied_lm_head), quantized once along the hidden axis, in blocks as the
MatMuls are, at the recipe's width for it. `--keep-embeddings-fp` (or the recipe choosing
"float") leaves both to the precision pass.

MatMulNBits targets (ort-cpu, ort-cuda): the lookup is com.microsoft GatherBlockQuantized and the lm_head MatMulNBits,
reading the same B bytes (MatMulNBits' [vocab, blocks, block * bits / 8] layout, which
GatherBlockQuantized reads with quantize_axis 2): one copy of the largest tensor in the file.
DequantizeLinear targets (onnx, tensorrt): one DequantizeLinear of the table, read by the Gather and the Gemm.
The lookup's two forms are quantize_lookups' (the other tables only looked up).
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.quantization import blocks
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import initializer_of, replace_value
from gemma_export.quantization.units import Unit, method_of, planned
from gemma_export.passes.quantize_lookups import dequantized, gather_block_quantized, quantized_rows
from gemma_export.passes.quantize_matmuls import MS_DOMAIN, matmul_nbits, nbits_initializers
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig
from gemma_graphs.roles import roles

NAME = "quantize_embedding"
REQUIRES = ("quant_recipe",)


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return options.quant != "none" and not options.keep_embeddings_fp


def run(model: ir.Model, ctx: PassContext) -> int:
    options = ctx.options
    graph = model.graph
    embedding = roles(ctx.config).embedding
    table = initializer_of(graph.initializers.get(embedding))
    if not method_of(ctx).quantizes or options.keep_embeddings_fp or table is None:
        return 0
    unit = Unit(table, [], stored_as_rows=True)
    plan = planned(ctx, unit)
    if plan is None:
        return 0
    scheme, blocks_of = plan
    uses = list(table.uses())
    if ctx.target.quantized_matmul == "MatMulNBits":
        blocks_of = blocks_of or quantized_rows(unit.rows(), scheme)
        packed = nbits_initializers(graph, table.const_value, scheme, embedding, blocks_of)
        for node, _ in uses:
            _ort_use(graph, node, unit, packed, scheme, blocks_of)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    else:
        dequantized(graph, unit, scheme)
    graph.initializers.pop(embedding)
    return len(uses)


def _ort_use(graph: ir.Graph, node: ir.Node, unit: Unit, packed, scheme: blocks.Scheme,
             blocks_of: blocks.BlockReader) -> None:
    table = unit.weight
    if node.op_type == "Gather" and node.inputs[0] is table and node.attributes.get_int("axis", 0) == 0:
        out = gather_block_quantized(graph, node, unit, packed, scheme, blocks_of)
    elif node.op_type == "Gemm" and node.inputs[1] is table and node.attributes.get_int("transB", 0) == 1 \
            and len(node.inputs) == 2:
        out = matmul_nbits(graph, node, node.inputs[0], table.const_value, scheme, table.name, packed)
    else:
        raise AssertionError(f"{table.name} is read by an unexpected {node.op_type} ({node.name})")
    replace_value(node.outputs[0], out)
    graph.remove(node, safe=True)
