"""Sibling projections packed into one MatMul: the MatMuls reading the same activation with
[in, n_i] weights (q/k/v, gate/up) become one MatMul with the weights side by side (written
lazily), followed by a Split. One larger product instead of several small ones: one pass over
the activation and fewer kernel launches per token.

A GroupQueryAttention reading exactly the three split pieces as query, key and value takes the
packed tensor as its query instead (its packed-QKV form), so the Split goes away. Gemma 3 keeps
the Split: its q/k norms sit between the projections and the kernel."""

from __future__ import annotations

import os

import onnx_ir as ir

from gemma_export.tensors import concatenated
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, initializer_of, replace_value

NAME = "pack_matmuls"
REQUIRES = ("fold_weight_transposes",)  # which stores the [in, n] weights it packs
AFTER = ("attention_gqa",)  # whose GroupQueryAttention it feeds the packed QKV


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    siblings: dict[ir.Value, list[ir.Node]] = {}
    for node in graph:
        if node.op_type != "MatMul" or node.domain != "":
            continue
        weight = initializer_of(node.inputs[1])
        if weight is not None and weight.shape is not None and weight.shape.rank() == 2:
            siblings.setdefault(node.inputs[0], []).append(node)
        else:
            ctx.left_alone(NAME, node.name, "its second input is not a 2-D weight")
    count = 0
    for x, nodes in siblings.items():
        if len(nodes) > 1:
            _pack(graph, x, nodes)
            count += 1
        else:
            ctx.left_alone(NAME, nodes[0].name, "no other MatMul with a 2-D weight reads its input")
    for node in list(graph):
        if node.op_type == "GroupQueryAttention":
            reason = _feed_packed_qkv(node)
            if reason is not None:
                ctx.left_alone(NAME, node.name, reason)
    return count


def _pack(graph: ir.Graph, x: ir.Value, nodes: list[ir.Node]) -> None:
    weights = [n.inputs[1] for n in nodes]
    name = _packed_name([w.name for w in weights])
    packed = add_initializer(graph, name, concatenated([w.const_value for w in weights], name))
    sizes = [w.shape[1] for w in weights]
    first = nodes[0]
    product = add_node(graph, first, "MatMul", [x, packed])
    split = add_node(graph, first, "Split", [product.outputs[0], constant_int64(graph, f"{name}.sizes", sizes)],
                     {"axis": -1}, num_outputs=len(nodes))
    for node, piece in zip(nodes, split.outputs):
        replace_value(node.outputs[0], piece)
    graph.remove(nodes, safe=True)


def _packed_name(names: list[str]) -> str:
    """model.layers.0.self_attn.q_proj.weight.T, ...k_proj... -> model.layers.0.self_attn.q_proj+k_proj+v_proj;
    a list's members keep their index (model.per_layer_model_projection+altup_projections.0+...)."""
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind(".") + 1]
    return prefix + "+".join(n[len(prefix):].removesuffix(".T").removesuffix(".weight") for n in names)


def _feed_packed_qkv(gqa: ir.Node) -> str | None:
    """Gives the attention the packed QKV; else says why it keeps its three inputs."""
    q, k, v = gqa.inputs[:3]
    split = q.producer() if q is not None else None
    if split is None or split.op_type != "Split" or list(split.outputs) != [q, k, v]:
        return "its query, key and value are not the three pieces of one Split"
    if any(len(piece.uses()) != 1 for piece in split.outputs):
        return "a piece of its Split has another reader"
    gqa.replace_input_with(0, split.inputs[0])
    gqa.replace_input_with(1, None)
    gqa.replace_input_with(2, None)
    return None
