"""Attention nodes as TensorRT's ONNX parser takes them (target tensorrt, after the precision
pass). Its Attention refuses two attributes the onnx target's lowering sets:

- softcap (Gemma 2), "Setting softcap is not supported in TensorRT Attention": such an attention
  is spelled out in plain ops. attention_onnx's boolean mask already hides every key at or past
  nonpad_kv_seqlen, so that input is not needed.
      scores = softcap * tanh(scale * Q K^T / softcap)      in fp32, as graphs/ops.py computes them
      Y      = softmax(where(mask, scores, MASKED)) V       V's dtype again for the product
  Query heads are grouped by their KV head ([B, Hkv, G, S, D], the grouping Attention uses with
  fewer KV heads than query heads), so that keys and values are never repeated.
- softmax_precision (set by the precision pass at fp16/bf16), "Setting softmax precision is not
  supported in TensorRT Attention": dropped; TensorRT chooses the softmax's internal precision.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, replace_value
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "attention_tensorrt"
REQUIRES = ("attention_onnx",)
AFTER = ("precision",)  # which sets the softmax_precision this pass drops
SWAP_LAST = [0, 1, 2, 4, 3]


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return bool(config.attn_softcap) or options.dtype != "fp32"  # softcap, or precision's softmax_precision


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    for node in [n for n in graph if n.domain == "" and n.op_type == "Attention"]:
        if node.attributes.get_float("softcap", 0.0):
            _decompose(graph, node, ctx)
            count += 1
        elif node.attributes.pop("softmax_precision", None) is not None:
            count += 1
        else:
            ctx.left_alone(NAME, node.name, "neither softcap nor softmax_precision: TensorRT takes it as it is")
    return count


def _decompose(graph: ir.Graph, node: ir.Node, ctx: PassContext) -> None:
    from gemma_graphs.ops import MASKED

    q, k, v, mask = node.inputs[:4]
    if mask is None or any(x is not None for x in node.inputs[4:6]) or node.attributes.get_int("is_causal", 0):
        raise AssertionError(f"{node.name}: expected attention_onnx's form (a mask, no past, not causal)")
    cfg = ctx.config
    kv, group, head_dim = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    # the attributes as the saved graph holds them (float32), whatever precision they were made in
    softcap, scale = (float(np.float32(node.attributes.get_float(name))) for name in ("softcap", "scale"))

    def op(op_type: str, *inputs: ir.Value, **attrs) -> ir.Value:
        return add_node(graph, node, op_type, list(inputs), attrs).outputs[0]

    axis_2 = constant_int64(graph, "const.axis_2", [2])
    grouped = op("Reshape", q, constant_int64(graph, f"const.group_heads_{kv}x{group}x{head_dim}",
                                              [0, kv, group, -1, head_dim]))
    scores = op("Cast", op("MatMul", grouped, op("Transpose", op("Unsqueeze", k, axis_2), perm=SWAP_LAST)),
                to=ir.DataType.FLOAT)
    capped = op("Mul", op("Tanh", op("Mul", scores, _float(graph, scale / softcap))), _float(graph, softcap))
    probs = op("Softmax", op("Where", op("Unsqueeze", mask, axis_2), capped, _float(graph, MASKED)), axis=-1)
    y = op("MatMul", op("CastLike", probs, v), op("Unsqueeze", v, axis_2))
    y = op("Reshape", y, constant_int64(graph, f"const.merge_groups_{kv * group}x{head_dim}",
                                        [0, kv * group, -1, head_dim]))
    replace_value(node.outputs[0], y)
    graph.remove(node, safe=True)


def _float(graph: ir.Graph, value: float) -> ir.Value:
    name = f"const.float_{value!r}"
    if name not in graph.initializers:
        add_initializer(graph, name, np.asarray(value, dtype=np.float32))
    return graph.initializers[name]
