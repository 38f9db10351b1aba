"""`--quant int8|int4`: every MatMul with a 2-D weight [K, N] reads it quantized along K in blocks
of `--block-size` (gemma_export/quant.py: int8 symmetric, int4 with zero points where the target
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

from gemma_export import quant
from gemma_export.tensors import transposed, untransposed
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, initializer_of, replace_value

NAME = "quantize_matmuls"
MS_DOMAIN = "com.microsoft"
ACCURACY_LEVEL = 4


def run(model: ir.Model, ctx: PassContext) -> int:
    options = ctx.options
    if options.quant == "none":
        return 0
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain != "":
            continue
        weight = initializer_of(node.inputs[1])
        if weight is None or weight.shape is None or weight.shape.rank() != 2 or weight.dtype != ir.DataType.FLOAT:
            continue
        scheme = quant.for_matrix(target_scheme(ctx), weight.shape[0])
        rows = untransposed(weight.const_value, weight.name + ".rows")  # [N, K]
        if ctx.target.quantized_matmul == "MatMulNBits":
            out = matmul_nbits(graph, node, node.inputs[0], rows, scheme, weight.name)
        else:
            out = _dequantized_matmul(graph, node, rows, scheme, weight.name)
        replace_value(node.outputs[0], out)
        graph.remove(node, safe=True)
        count += 1
    if count and ctx.target.quantized_matmul == "MatMulNBits":
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return count


def target_scheme(ctx: PassContext) -> quant.Scheme:
    return quant.scheme(ctx.options.quant, ctx.options.block_size, zero_points=ctx.target.int4_zero_points)


def matmul_nbits(graph: ir.Graph, before: ir.Node, x: ir.Value, rows: ir.TensorProtocol, scheme: quant.Scheme,
                 name: str, packed: tuple[ir.Value, ir.Value, ir.Value | None] | None = None) -> ir.Value:
    """x @ rows.T through MatMulNBits; `packed` reuses already-added (B, scales, zero points)."""
    n, k = rows.shape.numpy()
    b, scales, zero = packed or nbits_initializers(graph, rows, scheme, name)
    node = add_node(graph, before, "MatMulNBits", [x, b, scales] + ([zero] if zero is not None else []),
                    {"K": k, "N": n, "bits": scheme.bits, "block_size": scheme.block,
                     "accuracy_level": ACCURACY_LEVEL}, domain=MS_DOMAIN)
    return node.outputs[0]


def nbits_initializers(graph: ir.Graph, rows: ir.TensorProtocol, scheme: quant.Scheme,
                       name: str) -> tuple[ir.Value, ir.Value, ir.Value | None]:
    tensors = quant.nbits_tensors(rows, scheme, name)
    return tuple(add_initializer(graph, t.name, t) if t is not None else None for t in tensors)


def _dequantized_matmul(graph: ir.Graph, node: ir.Node, rows: ir.TensorProtocol, scheme: quant.Scheme,
                        name: str) -> ir.Value:
    """MatMul(x, DequantizeLinear(q [K, N])): the quantized rows transposed back."""
    tensors = [t for t in quant.dequantize_linear_tensors(rows, scheme, name) if t is not None]
    inputs = [add_initializer(graph, t.name, transposed(t, t.name)) for t in tensors]
    weight = add_node(graph, node, "DequantizeLinear", inputs, {"axis": 0, "block_size": scheme.block}).outputs[0]
    return add_node(graph, node, "MatMul", [node.inputs[0], weight]).outputs[0]
