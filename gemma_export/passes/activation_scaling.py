"""Calibrated quantization (`--calibrate`, int8 or int4): each product y = x W^T that will be
quantized (the MatMuls, and the tied lm_head unless --keep-embeddings-fp) gets its input channels
scaled, W s and x / s, with s measured by gemma_export/quantization/activation_scales.py (AWQ /
SmoothQuant families on a grid; why, and what it gains, is said there).

x / s is folded into the norm that produces x when that norm feeds only this product (q/k/v,
gate/up, lm_head); elsewhere (o_proj, down_proj) a Mul by 1 / s goes in front of the product. The
embedding table, scaled for the lm_head, is read by the token lookup too: a Mul by 1 / s follows it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, initializer_of
from gemma_export.quantization import activation_scales
from gemma_export.quantization.units import units
from gemma_export.targets import ExportOptions, Target
from gemma_export.tensors import mapped, transposed, untransposed
from gemma_graphs.config import GemmaConfig
from gemma_graphs.roles import roles

NAME = "activation_scaling"
NORMS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization")


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return options.calibrate


def run(model: ir.Model, ctx: PassContext) -> int:
    if not ctx.options.calibrate:
        return 0
    graph = model.graph
    embedding = roles(ctx.config).embedding
    measured = [u for u in units(graph, ctx) if u.products]
    chosen, tokens = activation_scales.scales(ctx, measured)
    for unit in measured:
        s = chosen[unit.name][1]
        _scale_weight(unit.weight, s, embedding)
        for node in unit.products:
            _divide_input(graph, node, node.inputs[0], unit.weight, s, embedding)
        ctx.input_scales[unit.name] = s
    ctx.report["calibration"] = {"method": "activation-aware scaling (AWQ / SmoothQuant families), on a grid of 2^(k/8)",
                                 "tokens": tokens, "alpha": {name: alpha for name, (alpha, _) in chosen.items()}}
    return sum(len(u.products) for u in measured)


def _scale_weight(weight: ir.Value, s: np.ndarray, embedding: str) -> None:
    """Input channel k times s[k]: columns of the [out, in] rows, kept as streamed rows."""
    if weight.name == embedding:
        weight.const_value = mapped(weight.const_value, lambda r: (r * s).astype(np.float32), embedding)
        return
    rows = untransposed(weight.const_value, weight.name + ".rows")
    scaled = mapped(rows, lambda r: (r * s).astype(np.float32), weight.name + ".scaled_rows")
    weight.const_value = transposed(scaled, weight.name)


def _divide_input(graph: ir.Graph, node: ir.Node, x: ir.Value, weight: ir.Value, s: np.ndarray, embedding: str) -> None:
    norm = x.producer()
    gamma = initializer_of(norm.inputs[-1]) if norm is not None and norm.op_type in NORMS \
        and x is norm.outputs[0] else None
    if gamma is not None and len(gamma.uses()) == 1 and len(x.uses()) == 1:
        gamma.const_value = mapped(gamma.const_value, lambda g: (g / s).astype(np.float32), gamma.name)
    else:
        inverse = add_initializer(graph, f"{weight.name}.input_scale", (1.0 / s).astype(np.float32))
        divided = add_node(graph, node, "Mul", [x, inverse]).outputs[0]
        node.replace_input_with(0, divided)
    if weight.name == embedding:  # the scaled table is also looked up: undo s on the rows it gives
        for gather in [n for n, _ in weight.uses() if n.op_type == "Gather"]:
            looked_up = gather.outputs[0]
            uses = list(looked_up.uses())
            inverse = add_initializer(graph, f"{embedding}.lookup_scale", (1.0 / s).astype(np.float32))
            undone = add_node(graph, uses[0][0], "Mul", [looked_up, inverse]).outputs[0]
            for user, i in uses:
                user.replace_input_with(i, undone)
