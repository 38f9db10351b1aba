"""`--quant` for the tables the graph only looks up (quant_recipe's lookup units: Gemma 4's
per-layer embedding [vocab, layers * dim] and each layer's expert tables [experts, out, in]),
quantized along their last axis in blocks, at the recipe's width for each ("float" leaves a table
to the precision pass).

MatMulNBits targets (ort-cpu, ort-cuda): each Gather becomes com.microsoft GatherBlockQuantized,
which dequantizes only the rows it gathers: a token reads its own per-layer vector and its top-k
experts, never the whole table. DequantizeLinear targets (onnx, tensorrt): one DequantizeLinear of
the table feeding the Gathers (smaller files; the engine holds what it dequantizes).

The tied embedding's lookup (quantize_embedding) uses the same two forms.
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.quantization import blocks
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, replace_value
from gemma_export.quantization.units import Unit, quantized_units
from gemma_export.passes.quantize_matmuls import MS_DOMAIN, nbits_initializers
from gemma_export.targets import ExportOptions, Target
from gemma_export.tensors import StreamedTensor
from gemma_graphs.config import GemmaConfig

NAME = "quantize_lookups"
REQUIRES = ("quant_recipe",)


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    tables = config.num_experts or (config.hidden_size_per_layer_input and not options.keep_embeddings_fp)
    return options.quant != "none" and bool(tables)


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    for unit, scheme, blocks_of in quantized_units(graph, ctx, kind=lambda u: not u.products):
        gathers = list(unit.weight.uses())
        if ctx.target.quantized_matmul == "MatMulNBits":
            blocks_of = blocks_of or quantized_rows(unit.rows(), scheme)
            packed = nbits_initializers(graph, unit.rows(), scheme, unit.name, blocks_of)
            for node, _ in gathers:
                if node.op_type != "Gather" or node.inputs[0] is not unit.weight:
                    raise AssertionError(f"{unit.name} is read by an unexpected {node.op_type} ({node.name})")
                replace_value(node.outputs[0], gather_block_quantized(graph, node, unit, packed, scheme, blocks_of))
                graph.remove(node, safe=True)
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        else:
            dequantized(graph, unit, scheme)
        graph.initializers.pop(unit.name)
        count += len(gathers)
    return count


def quantized_rows(rows: ir.TensorProtocol, scheme: blocks.Scheme) -> blocks.BlockReader:
    return lambda a, b: blocks.quantize(rows.rows(a, b), scheme)


def gather_block_quantized(graph: ir.Graph, node: ir.Node, unit: Unit, packed, scheme: blocks.Scheme,
                           blocks_of: blocks.BlockReader) -> ir.Value:
    """Gather(table, indices) on axis 0 read from the table's MatMulNBits bytes `packed` (B
    [rows, blocks, block * bits / 8], scales, zero points, offsets of unit.rows()). The op wants the
    gathered axis first and one block per row of its last axis: for a table of more than two dims
    B, scales and zero points are viewed as [table dim 0, rest, ...]; the result is reshaped to
    [indices..., table dims 1...]."""
    b, scales, _, offsets = packed
    dims = list(unit.weight.shape.numpy())
    rows, blocks = scales.shape.numpy()
    first = len(dims) > 2  # dim 0 is not the rows of B

    def by_first(value: ir.Value, tail: list[int]) -> ir.Value:
        shape = constant_int64(graph, f"const.{dims[0]}_by_rest_by_{'x'.join(map(str, tail))}", [dims[0], -1, *tail])
        return add_node(graph, node, "Reshape", [value, shape]).outputs[0]

    data = by_first(b, [b.shape[2]]) if first else b
    per_block = by_first(scales, [1]) if first else \
        add_node(graph, node, "Reshape", [scales, constant_int64(graph, "const.blocks_by_one", [0, 0, 1])]).outputs[0]
    inputs = [data, node.inputs[1], per_block]
    if not scheme.symmetric:
        zero = StreamedTensor(lambda a, z: blocks_of(a, z).zero_points.reshape(z - a, blocks, 1), (rows, blocks, 1),
                              ir.DataType.UINT8, f"{unit.name}.zero_points_by_block", whole=unit.rows().whole)
        zero_value = add_initializer(graph, zero.name, zero)
        inputs.append(by_first(zero_value, [1]) if first else zero_value)
    gathered = add_node(graph, node, "GatherBlockQuantized", inputs,
                        {"gather_axis": 0, "quantize_axis": 2, "block_size": scheme.block,
                         "bits": scheme.bits}, domain=MS_DOMAIN).outputs[0]  # [indices..., rest, block]
    if offsets is not None:  # each block's float offset, looked up and added to its values
        if first:  # offsets come only with a source's own blocks, which flattened tables never keep
            raise AssertionError(f"{unit.name}: float block offsets on a table of {len(dims)} dims")
        looked_up = add_node(graph, node, "Gather", [offsets, node.inputs[1]], {"axis": 0}).outputs[0]
        column = add_node(graph, node, "Unsqueeze", [looked_up, constant_int64(graph, "const.last_axis", [-1])])
        gathered = add_node(graph, node, "Add", [gathered, column.outputs[0]]).outputs[0]
    indices = node.inputs[1].shape.rank() if node.inputs[1].shape is not None else None
    if not first and indices is not None:
        shape = constant_int64(graph, "const.merge_blocks" if indices == 2 else f"const.merge_blocks_{indices}",
                               [0] * indices + [-1])
    else:  # the indices' dims, then the table's
        index_dims = add_node(graph, node, "Shape", [node.inputs[1]]).outputs[0]
        table_dims = constant_int64(graph, f"const.dims_{'x'.join(map(str, dims[1:]))}", dims[1:])
        shape = add_node(graph, node, "Concat", [index_dims, table_dims], {"axis": 0}).outputs[0]
    return add_node(graph, node, "Reshape", [gathered, shape]).outputs[0]


def dequantized(graph: ir.Graph, unit: Unit, scheme: blocks.Scheme) -> None:
    """Every reader of the table reads one DequantizeLinear of its rows (reshaped to the table's
    dims where it has more than two)."""
    table = unit.weight
    data, scale, zero = blocks.dequantize_linear_tensors(unit.rows(), scheme, unit.name)
    inputs = [add_initializer(graph, t.name, t) for t in (data, scale, zero) if t is not None]
    before = min((n for n, _ in table.uses()), key=lambda n: list(graph).index(n))
    weight = add_node(graph, before, "DequantizeLinear", inputs, {"axis": 1, "block_size": scheme.block}).outputs[0]
    if table.shape.rank() > 2:
        weight = add_node(graph, before, "Reshape",
                          [weight, constant_int64(graph, f"{unit.name}.dims", list(table.shape.numpy()))]).outputs[0]
    weight.shape, weight.type = table.shape, table.type
    table.replace_all_uses_with(weight)
