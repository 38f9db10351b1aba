"""`--quant` for the tied embedding, both its uses: the token lookup and the lm_head
(Gemm(h, E, transB=1) after tied_lm_head), quantized once along the hidden axis, in blocks as the
MatMuls are, at the recipe's width for it. `--keep-embeddings-fp` (or the recipe choosing
"float") leaves both to the precision pass.

MatMulNBits targets (ort-cpu, ort-cuda): the lookup is com.microsoft GatherBlockQuantized and the lm_head MatMulNBits,
reading the same B bytes (MatMulNBits' [vocab, blocks, block * bits / 8] layout, which
GatherBlockQuantized reads with quantize_axis 2): one copy of the largest tensor in the file.
DequantizeLinear targets (onnx, tensorrt): one DequantizeLinear of the table, read by the Gather and the Gemm.
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export import quant
from gemma_export.tensors import StreamedTensor, as_streamed
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, initializer_of, replace_value
from gemma_export.passes.quant_recipe import Unit, planned
from gemma_export.passes.quantize_matmuls import MS_DOMAIN, matmul_nbits, nbits_initializers
from gemma_export.passes.tied_lm_head import EMBEDDING

NAME = "quantize_embedding"


def run(model: ir.Model, ctx: PassContext) -> int:
    options = ctx.options
    graph = model.graph
    table = initializer_of(graph.initializers.get(EMBEDDING))
    if options.quant == "none" or options.keep_embeddings_fp or table is None:
        return 0
    plan = planned(ctx, Unit(table, []))
    if plan is None:
        return 0
    scheme, blocks_of = plan
    uses = list(table.uses())
    if ctx.target.quantized_matmul == "MatMulNBits":
        blocks_of = blocks_of or (lambda a, b: quant.quantize(as_streamed(table.const_value).rows(a, b), scheme))
        packed = nbits_initializers(graph, table.const_value, scheme, EMBEDDING, blocks_of)
        for node, _ in uses:
            _ort_use(graph, node, table, packed, scheme, blocks_of)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    else:
        _dequantized(graph, table, scheme)
    graph.initializers.pop(EMBEDDING)
    return len(uses)


def _ort_use(graph: ir.Graph, node: ir.Node, table: ir.Value, packed, scheme: quant.Scheme,
             blocks_of: quant.BlockReader) -> None:
    if node.op_type == "Gather" and node.inputs[0] is table and node.attributes.get_int("axis", 0) == 0:
        out = _gather_block_quantized(graph, node, packed, scheme, blocks_of)
    elif node.op_type == "Gemm" and node.inputs[1] is table and node.attributes.get_int("transB", 0) == 1 \
            and len(node.inputs) == 2:
        out = matmul_nbits(graph, node, node.inputs[0], table.const_value, scheme, EMBEDDING, packed)
    else:
        raise AssertionError(f"{EMBEDDING} is read by an unexpected {node.op_type} ({node.name})")
    replace_value(node.outputs[0], out)
    graph.remove(node, safe=True)


def _gather_block_quantized(graph: ir.Graph, node: ir.Node, packed, scheme: quant.Scheme,
                            blocks_of: quant.BlockReader) -> ir.Value:
    b, scales, _, offsets = packed
    vocab, blocks = scales.shape
    # GatherBlockQuantized wants scales (and zero points) of B's rank: [vocab, blocks, 1]
    per_block = add_node(graph, node, "Reshape", [scales, constant_int64(graph, "const.blocks_by_one", [0, 0, 1])])
    inputs = [b, node.inputs[1], per_block.outputs[0]]
    if not scheme.symmetric:
        zero = StreamedTensor(lambda a, z: blocks_of(a, z).zero_points.reshape(z - a, blocks, 1), (vocab, blocks, 1),
                              ir.DataType.UINT8, f"{EMBEDDING}.zero_points_by_block",
                              whole=as_streamed(graph.initializers[EMBEDDING].const_value).whole)
        inputs.append(add_initializer(graph, zero.name, zero))
    gathered = add_node(graph, node, "GatherBlockQuantized", inputs,
                        {"gather_axis": 0, "quantize_axis": 2, "block_size": scheme.block,
                         "bits": scheme.bits}, domain=MS_DOMAIN).outputs[0]  # [..., blocks, block]
    if offsets is not None:  # each block's float offset, looked up and added to its values
        looked_up = add_node(graph, node, "Gather", [offsets, node.inputs[1]], {"axis": 0}).outputs[0]
        column = add_node(graph, node, "Unsqueeze", [looked_up, constant_int64(graph, "const.last_axis", [-1])])
        gathered = add_node(graph, node, "Add", [gathered, column.outputs[0]]).outputs[0]
    rows = add_node(graph, node, "Reshape", [gathered, constant_int64(graph, "const.merge_blocks", [0, 0, -1])])
    return rows.outputs[0]


def _dequantized(graph: ir.Graph, table: ir.Value, scheme: quant.Scheme) -> None:
    data, scale, zero = quant.dequantize_linear_tensors(table.const_value, scheme, EMBEDDING)
    inputs = [add_initializer(graph, t.name, t) for t in (data, scale, zero) if t is not None]
    attrs = {"axis": 1, "block_size": scheme.block}
    before = min((n for n, _ in table.uses()), key=lambda n: list(graph).index(n))
    weight = add_node(graph, before, "DequantizeLinear", inputs, attrs).outputs[0]
    weight.shape, weight.type = table.shape, table.type
    table.replace_all_uses_with(weight)
