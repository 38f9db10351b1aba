"""GemmaRoPE(X [B, S, N, D], position_ids; theta, scale, pairs) -> RotaryEmbedding (opset 23,
half-split: interleaved 0) over X viewed as [B, S, N * D]. Its cos/sin caches [max_seq_len, D/2]
are initializers, one pair per distinct (theta, scale, D, pairs) (Gemma 3 has two: local and
global layers); frequencies beyond `pairs` are 0, so proportional RoPE's unrotated dims pass
through (cos 1, sin 0)."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.frontend.onnx_ops import ROPE
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, project_nodes, replace_value

NAME = "rotary_embedding"
REQUIRES = ("set_opset",)  # RotaryEmbedding is opset 23


def run(model: ir.Model, ctx: PassContext) -> int:
    count = 0
    for node in project_nodes(model.graph, ROPE):
        reason = _unlowerable(node)
        if reason is not None:
            ctx.left_alone(NAME, node.name, reason)
            continue
        lower_rope(model.graph, node, ctx.options.max_seq_len)
        count += 1
    return count


def _unlowerable(node: ir.Node) -> str | None:
    """Why the node cannot become RotaryEmbedding (whose num_heads and caches need static heads and head_dim)."""
    shape = node.inputs[0].shape
    if shape is None or shape.rank() != 4 or not all(isinstance(d, int) for d in list(shape)[2:]):
        return "its heads and head_dim are not static"
    return None


def lower_rope(graph: ir.Graph, node: ir.Node, max_seq_len: int) -> None:
    if (reason := _unlowerable(node)) is not None:
        raise AssertionError(f"{node.name}: {reason}")
    x, position_ids = node.inputs
    heads, head_dim = x.shape[2], x.shape[3]
    attrs = node.attributes
    cos, sin = cos_sin_caches(graph, attrs.get_float("theta"), attrs.get_float("scale"), head_dim, max_seq_len,
                              attrs.get_int("pairs"))
    flat = add_node(graph, node, "Reshape", [x, constant_int64(graph, "const.merge_heads", [0, 0, -1])])
    rotated = add_node(graph, node, "RotaryEmbedding", [flat.outputs[0], cos, sin, position_ids],
                       {"num_heads": heads, "interleaved": 0})
    split = constant_int64(graph, f"const.split_heads_{heads}x{head_dim}", [0, 0, heads, head_dim])
    out = add_node(graph, node, "Reshape", [rotated.outputs[0], split])
    replace_value(node.outputs[0], out.outputs[0])
    graph.remove(node, safe=True)


def cos_sin_caches(graph: ir.Graph, theta: float, scale: float, head_dim: int, max_seq_len: int,
                   pairs: int) -> tuple[ir.Value, ir.Value]:
    """cos and sin [max_seq_len, head_dim / 2] of position x inverse frequency (the angle in fp32
    as transformers computes it, from the eager reference's inv_freq), shared by every reader. cos
    and sin in float64, rounded once: fp32 cos/sin differ between instruction sets in the last
    bit, and the artifact's bytes must not depend on the host that exports it."""
    name = f"rotary.theta_{theta:g}.scale_{scale:g}"
    if pairs != head_dim // 2:  # proportional RoPE (Gemma 4's global layers)
        name += f".dim_{head_dim}.pairs_{pairs}"
    if f"{name}.cos" not in graph.initializers:
        import torch

        from gemma_graphs.ops import rope_inv_freq

        inv_freq = rope_inv_freq(head_dim, theta, scale, pairs)
        freqs = torch.arange(max_seq_len, dtype=torch.int64).float()[:, None] * inv_freq
        add_initializer(graph, f"{name}.cos", freqs.double().cos().float().numpy())
        add_initializer(graph, f"{name}.sin", freqs.double().sin().float().numpy())
    cos, sin = graph.initializers[f"{name}.cos"], graph.initializers[f"{name}.sin"]
    if cos.shape[1] != head_dim // 2:
        raise AssertionError(f"{name}: one cos/sin cache for two head dims")
    return cos, sin
