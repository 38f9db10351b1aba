"""`--quant int8|int4` for the tied embedding, both its uses: the token lookup and the lm_head
(Gemm(h, E, transB=1) after tied_lm_head), quantized once along the hidden axis, in blocks as the
MatMuls are. `--keep-embeddings-fp` leaves both to the precision pass.

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
from gemma_export.passes.quantize_matmuls import MS_DOMAIN, matmul_nbits, nbits_initializers, target_scheme
from gemma_export.passes.tied_lm_head import EMBEDDING

NAME = "quantize_embedding"


def run(model: ir.Model, ctx: PassContext) -> int:
    options = ctx.options
    graph = model.graph
    table = initializer_of(graph.initializers.get(EMBEDDING))
    if options.quant == "none" or options.keep_embeddings_fp or table is None:
        return 0
    hidden = table.shape[1]
    scheme = quant.for_matrix(target_scheme(ctx), hidden)
    uses = list(table.uses())
    if ctx.target.quantized_matmul == "MatMulNBits":
        packed = nbits_initializers(graph, table.const_value, scheme, EMBEDDING)
        for node, _ in uses:
            _ort_use(graph, node, table, packed, scheme)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    else:
        _dequantized(graph, table, scheme)
    graph.initializers.pop(EMBEDDING)
    return len(uses)


def _ort_use(graph: ir.Graph, node: ir.Node, table: ir.Value, packed, scheme: quant.Scheme) -> None:
    if node.op_type == "Gather" and node.inputs[0] is table and node.attributes.get_int("axis", 0) == 0:
        out = _gather_block_quantized(graph, node, packed, scheme, table.shape[1])
    elif node.op_type == "Gemm" and node.inputs[1] is table and node.attributes.get_int("transB", 0) == 1 \
            and len(node.inputs) == 2:
        out = matmul_nbits(graph, node, node.inputs[0], table.const_value, scheme, EMBEDDING, packed)
    else:
        raise AssertionError(f"{EMBEDDING} is read by an unexpected {node.op_type} ({node.name})")
    replace_value(node.outputs[0], out)
    graph.remove(node, safe=True)


def _gather_block_quantized(graph: ir.Graph, node: ir.Node, packed, scheme: quant.Scheme, hidden: int) -> ir.Value:
    b, scales, _ = packed
    vocab, blocks = scales.shape
    # GatherBlockQuantized wants scales (and zero points) of B's rank: [vocab, blocks, 1]
    per_block = add_node(graph, node, "Reshape", [scales, constant_int64(graph, "const.blocks_by_one", [0, 0, 1])])
    inputs = [b, node.inputs[1], per_block.outputs[0]]
    if not scheme.symmetric:
        zero = _zero_points_by_block(as_streamed(graph.initializers[EMBEDDING].const_value), scheme, (vocab, blocks, 1))
        inputs.append(add_initializer(graph, zero.name, zero))
    gathered = add_node(graph, node, "GatherBlockQuantized", inputs,
                        {"gather_axis": 0, "quantize_axis": 2, "block_size": scheme.block,
                         "bits": scheme.bits}, domain=MS_DOMAIN)
    rows = add_node(graph, node, "Reshape", [gathered.outputs[0], constant_int64(graph, "const.merge_blocks", [0, 0, -1])])
    return rows.outputs[0]


def _zero_points_by_block(table: StreamedTensor, scheme: quant.Scheme, shape: tuple[int, ...]) -> StreamedTensor:
    """One uint8 zero point per block, unpacked (GatherBlockQuantized reads it so for 3-D data)."""
    return StreamedTensor(lambda a, b: quant.quantize(table.rows(a, b), scheme).zero_points.reshape(b - a, *shape[1:]),
                          shape, ir.DataType.UINT8, f"{EMBEDDING}.zero_points_by_block", whole=table.whole)


def _dequantized(graph: ir.Graph, table: ir.Value, scheme: quant.Scheme) -> None:
    data, scale, zero = quant.dequantize_linear_tensors(table.const_value, scheme, EMBEDDING)
    inputs = [add_initializer(graph, t.name, t) for t in (data, scale, zero) if t is not None]
    attrs = {"axis": 1, "block_size": scheme.block}
    before = min((n for n, _ in table.uses()), key=lambda n: list(graph).index(n))
    weight = add_node(graph, before, "DequantizeLinear", inputs, attrs).outputs[0]
    weight.shape, weight.type = table.shape, table.type
    table.replace_all_uses_with(weight)
