"""GemmaAttention with its two GemmaRoPE inputs -> com.microsoft GroupQueryAttention over the
in-place cache (one max-length buffer per layer, bound as both past and present).

Rotary runs inside the kernel (do_rotary=1, half-split: rotary_interleaved=0) from cos/sin caches
[max_seq_len, head_dim/2] computed in fp32 as transformers does, one pair per distinct
(theta, scale) (Gemma 3: local and global layers). Gemma 3's QK-norm stays in front of the kernel,
so it is applied before rotary, as in transformers.

Lengths come from the in-place cache interface: seqlens_k = past + new - 1 per row,
total_sequence_length = the batch's longest total. Without the kernel's 17th input (query lengths
per row, which onnxruntime before 1.32 refuses) a call over several rows either starts them all
(past 0, prompts right-padded: padding never enters the cache) or feeds each one token; the runtime
runs any other call one row at a time.

local_window_size is the window itself: onnxruntime's CPU kernel, like transformers' Gemma, lets
a query see `window` keys, itself included (checked against transformers with prompts longer than
the window: window - 1 and window + 1 both break parity).

A layer the kernel cannot take keeps the standard form of the `onnx` target (TensorScatter into
the same in-place cache + Attention, opset 24: set_opset runs first wherever standard_layers() has
one, its RoPE as RotaryEmbedding): a head_dim that is not
a multiple of 16 (the kernel's rotary), or a KV-shared layer (Gemma 4), which reads a cache
another layer writes (the kernel attends only to the cache it writes itself). The report's
`attention` entry lists the layers left unfused and why; no precondition of the fusion ever fails
an export.
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.frontend.onnx_ops import ATTENTIONS, BLOCK_ATTENTION, DOMAIN, ROPE
from gemma_export.passes import inplace_cache_io
from gemma_export.passes.attention_onnx import StandardAttention
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_node, constant_int64, project_nodes, replace_value
from gemma_export.passes.rotary_embedding import cos_sin_caches, lower_rope
from gemma_graphs.config import GemmaConfig

NAME = "attention_gqa"
REQUIRES = ("inplace_cache_io",)
AFTER = ("set_opset",)  # the layers kept in the standard form need opset 24
MS_DOMAIN = "com.microsoft"


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    nodes = project_nodes(graph, ATTENTIONS)
    unfused = {layer: reason for layer, node in enumerate(nodes) if (reason := _unfusable(node))}
    standard = StandardAttention(graph, nodes[0], ctx) if unfused else None
    lengths = None
    for layer, node in enumerate(nodes):
        if layer in unfused:
            for rope in dict.fromkeys(v.producer() for v in node.inputs[:2]):
                if _is_rope(rope):
                    lower_rope(graph, rope, ctx.options.max_seq_len)
            standard.lower(node, rings=False)
            continue
        if lengths is None:
            lengths = _lengths(graph, node)
        gqa = _group_query_attention(graph, node, lengths, ctx)
        if standard is not None:  # its cache may be read by a KV-shared layer
            window = node.attributes.get_int("window")
            standard.remember(gqa.outputs[1], standard.full_length(node, *gqa.outputs[1:3], window))
        for old, new in zip(node.outputs, gqa.outputs):
            replace_value(old, new)
        graph.remove(node, safe=True)
    fused = len(nodes) - len(unfused)
    if fused:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    ctx.report["attention"] = {"GroupQueryAttention": fused,
                               "unfused": {str(layer): reason for layer, reason in unfused.items()}}
    return fused


def standard_layers(config: GemmaConfig) -> list[int]:
    """The layers the kernel cannot take, read from the config (run() finds the same in the graph and
    names the reason): the KV-shared ones, those whose head_dim is not a multiple of 16, and a media
    decoder's layers where an image's tokens see each other."""
    return [layer for layer in range(config.num_layers)
            if layer >= config.first_kv_shared_layer or config.layer_head_dim(layer) % 16
            or config.layer_lookahead(layer)]


def _unfusable(node: ir.Node) -> str | None:
    """Why GroupQueryAttention cannot take this layer, or None."""
    q, k, past_key = node.inputs[0], node.inputs[1], node.inputs[3]
    if node.op_type == BLOCK_ATTENTION:
        return "an image's tokens see each other both ways here (lookahead); GroupQueryAttention is causal only"
    if past_key.producer() is not None:
        return "KV-shared: it reads another layer's cache, and GroupQueryAttention attends only to its own"
    q_rope, k_rope = q.producer(), k.producer()
    if not (_is_rope(q_rope) and _is_rope(k_rope) and _rope_key(q_rope) == _rope_key(k_rope)):
        return "its query and key are not rotated by one RoPE"
    head_dim = q.shape[3]
    if head_dim % 16:
        return f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention's rotary)"
    return None


def _group_query_attention(graph: ir.Graph, node: ir.Node, lengths, ctx: PassContext) -> ir.Node:
    q_rope, k_rope = (v.producer() for v in node.inputs[:2])
    theta, scale, pairs = _rope_key(q_rope)
    q_heads, head_dim = node.inputs[0].shape[2], node.inputs[0].shape[3]
    kv_heads = node.inputs[3].shape[1]
    cos, sin = cos_sin_caches(graph, theta, scale, head_dim, ctx.options.max_seq_len, pairs)
    seqlens_k, total = lengths
    q, k, v = (_merge_heads(graph, node, x) for x in (q_rope.inputs[0], k_rope.inputs[0], node.inputs[2]))
    past_k, past_v = node.inputs[3], node.inputs[4]
    window = node.attributes.get_int("window")
    gqa = add_node(
        graph, node, "GroupQueryAttention",
        [q, k, v, past_k, past_v, seqlens_k, total, cos, sin],
        {"num_heads": q_heads, "kv_num_heads": kv_heads,
         "scale": node.attributes.get_float("scale"), "softcap": node.attributes.get_float("softcap"),
         "local_window_size": window if window else -1, "do_rotary": 1, "rotary_interleaved": 0},
        domain=MS_DOMAIN, num_outputs=3, name=node.name)
    for new, past in zip(gqa.outputs[1:], (past_k, past_v)):
        new.shape, new.type = past.shape, past.type
    return gqa


def _is_rope(node: ir.Node | None) -> bool:
    return node is not None and node.domain == DOMAIN and node.op_type == ROPE


def _rope_key(node: ir.Node) -> tuple[float, float, int]:
    return node.attributes.get_float("theta"), node.attributes.get_float("scale"), node.attributes.get_int("pairs")


def _lengths(graph: ir.Graph, before: ir.Node) -> tuple[ir.Value, ir.Value]:
    """seqlens_k [B] (each row's last position) and total_sequence_length (the batch's longest), int32."""
    past_lengths, seq_lengths = inplace_cache_io.lengths(graph)
    int32 = ir.DataType.INT32
    total = add_node(graph, before, "Add", [past_lengths, seq_lengths]).outputs[0]
    last = add_node(graph, before, "Sub", [total, constant_int64(graph, "const.one", [1])]).outputs[0]
    seqlens_k = add_node(graph, before, "Cast", [last], {"to": int32}, name="seqlens_k").outputs[0]
    longest = add_node(graph, before, "ReduceMax", [total], {"keepdims": 0}).outputs[0]
    total_len = add_node(graph, before, "Cast", [longest], {"to": int32}, name="total_sequence_length").outputs[0]
    return seqlens_k, total_len


def _merge_heads(graph: ir.Graph, before: ir.Node, x: ir.Value) -> ir.Value:
    """[B, S, heads, D] -> [B, S, heads * D]: the tensor the traced view was made from when there
    is one (then the view goes dead), else a Reshape."""
    producer = x.producer()
    if producer is not None and producer.op_type == "Reshape":
        flat = producer.inputs[0]
        if flat.shape is not None and x.shape is not None and flat.shape.rank() == 3 \
                and list(flat.shape)[:2] == list(x.shape)[:2]:
            return flat
    return add_node(graph, before, "Reshape", [x, constant_int64(graph, "const.merge_heads", [0, 0, -1])]).outputs[0]
