"""`--quant`: every MatMul with a 2-D weight [K, N] reads it quantized along K in blocks of
`--block-size`, at the width the recipe chose for it (gemma_export/quantization/recipe.py; "float" leaves it to
the precision pass) (gemma_export/quantization/blocks.py: int8 symmetric, int4 with zero points where the target
reads them).

Targets whose quantized_matmul is "MatMulNBits" (ort-cpu, ort-cuda): com.microsoft MatMulNBits. accuracy_level 4 lets the CPU kernel quantize the
activations to int8 per block: its 8-bit kernel has no other fast path (an fp32-activation int8
MatMulNBits is far slower than at level 4), and at 4 bits it is faster too; the CUDA kernel
ignores the attribute.
"DequantizeLinear" (onnx, tensorrt): DequantizeLinear (blocks along K, block_size: opset 21+, which set_opset gives them)
feeding the MatMul, the form TensorRT builds and onnxruntime fuses into MatMulNBits itself.
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.quantization import blocks
from gemma_export.tensors import transposed
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, replace_value
from gemma_export.quantization.units import quantized_units
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "quantize_matmuls"
REQUIRES = ("quant_recipe",)
MS_DOMAIN = "com.microsoft"
ACCURACY_LEVEL = 4


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return options.quant != "none"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    # the embedding and lookup tables are quantize_embedding's and quantize_lookups'
    for unit, scheme, blocks_of in quantized_units(graph, ctx, kind=lambda u: not u.stored_as_rows):
        rows = unit.rows()  # [N, K]
        for node in unit.products:
            if ctx.target.quantized_matmul == "MatMulNBits":
                out = matmul_nbits(graph, node, node.inputs[0], rows, scheme, unit.name, blocks_of=blocks_of)
            else:
                out = _dequantized_matmul(graph, node, rows, scheme, unit.name)
            replace_value(node.outputs[0], out)
            graph.remove(node, safe=True)
            count += 1
    if count and ctx.target.quantized_matmul == "MatMulNBits":
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return count


def matmul_nbits(graph: ir.Graph, before: ir.Node, x: ir.Value, rows: ir.TensorProtocol, scheme: blocks.Scheme,
                 name: str, packed: tuple[ir.Value, ...] | None = None,
                 blocks_of: blocks.BlockReader | None = None) -> ir.Value:
    """x @ rows.T through MatMulNBits; `packed` reuses already-added (B, scales, zero points,
    offsets); blocks_of reads a source's own blocks instead of quantizing the rows."""
    n, k = rows.shape.numpy()
    b, scales, zero, offsets = packed or nbits_initializers(graph, rows, scheme, name, blocks_of)
    node = add_node(graph, before, "MatMulNBits", [x, b, scales] + ([zero] if zero is not None else []),
                    {"K": k, "N": n, "bits": scheme.bits, "block_size": scheme.block,
                     "accuracy_level": ACCURACY_LEVEL}, domain=MS_DOMAIN)
    if offsets is None:
        return node.outputs[0]
    return add_node(graph, before, "Add", [node.outputs[0], offset_term(graph, before, x, offsets, scheme)]).outputs[0]


def offset_term(graph: ir.Graph, before: ir.Node, x: ir.Value, offsets: ir.Value, scheme: blocks.Scheme) -> ir.Value:
    """sum over blocks b of offset[n, b] * sum of x over block b: what a float offset per block adds
    to x @ W.T. offsets: [N, blocks] (a Gemm reads it as stored)."""
    n, blocks = offsets.shape.numpy()
    rank = x.shape.rank() if x.shape is not None else 3
    split = constant_int64(graph, f"const.split_{blocks}x{scheme.block}_rank{rank}", [0] * (rank - 1) + [blocks, scheme.block])
    grouped = add_node(graph, before, "Reshape", [x, split]).outputs[0]
    sums = add_node(graph, before, "ReduceSum", [grouped, constant_int64(graph, "const.last_axis", [-1])],
                    {"keepdims": 0}).outputs[0]
    if rank == 2:
        return add_node(graph, before, "Gemm", [sums, offsets], {"transB": 1}).outputs[0]
    by_column = add_initializer(graph, f"{offsets.name}.T", transposed(offsets.const_value, f"{offsets.name}.T"))
    return add_node(graph, before, "MatMul", [sums, by_column]).outputs[0]


def nbits_initializers(graph: ir.Graph, rows: ir.TensorProtocol, scheme: blocks.Scheme, name: str,
                       blocks_of: blocks.BlockReader | None = None) -> tuple[ir.Value | None, ...]:
    tensors = blocks.nbits_tensors(rows, scheme, name, blocks_of)
    return tuple(add_initializer(graph, t.name, t) if t is not None else None for t in tensors)


def _dequantized_matmul(graph: ir.Graph, node: ir.Node, rows: ir.TensorProtocol, scheme: blocks.Scheme,
                        name: str) -> ir.Value:
    """MatMul(x, DequantizeLinear(q [K, N])): the quantized rows transposed back."""
    tensors = [t for t in blocks.dequantize_linear_tensors(rows, scheme, name) if t is not None]
    inputs = [add_initializer(graph, t.name, transposed(t, t.name)) for t in tensors]
    weight = add_node(graph, node, "DequantizeLinear", inputs, {"axis": 0, "block_size": scheme.block}).outputs[0]
    return add_node(graph, node, "MatMul", [node.inputs[0], weight]).outputs[0]
