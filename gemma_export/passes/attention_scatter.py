"""GemmaAttention over the in-place cache (after inplace_cache_io) -> standard ops:
TensorScatter (opset 24) writes the new keys and values into the static cache at past_lengths,
then Attention (opset 24, nonpad_kv_seqlen = past_lengths + seq_lengths, q scale and softcap as
attributes) reads the cache's first `longest` positions, longest = the batch's largest
past_lengths + seq_lengths. The Slice is for speed: onnxruntime's CPU kernel reads every key it
is given whatever nonpad_kv_seqlen says (one decode step, 8 heads x 256, 40 valid keys of 4096:
5.3 ms over the whole cache, 0.15 ms over a slice).

Visibility is a boolean mask [batch, 1, seq, longest], one per window size, shared by the layers:
key j is visible to the query in column i of row b iff j <= q and (no window, or q - j < window),
q = past_lengths[b] + i. Attention's is_causal is not used: it puts query i at
nonpad_kv_seqlen - seq + i, which in a right-padded row (seq_lengths[b] < seq) hides keys from
the real queries. A padded column (i >= seq_lengths[b]) takes the row's last real position as its
q, so that no query row is ever fully masked (runtimes disagree on what such a row gives) and
what it writes into the cache stays finite.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.inplace_cache_io import attention_nodes, lengths
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, replace_value

NAME = "attention_scatter"
HEADS_FIRST = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]
CACHE_AXIS = 2


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    nodes = attention_nodes(graph)
    if not nodes:
        return 0
    shared = _Shared(graph, nodes[0])
    for node in nodes:
        q, k, v, past_key, past_value = node.inputs[:5]
        scale, softcap, window = (node.attributes.get_float("scale"), node.attributes.get_float("softcap"),
                                  node.attributes.get_int("window"))
        present = [add_node(graph, node, "TensorScatter", [cache, _heads_first(graph, node, new), shared.past_lengths],
                            {"axis": CACHE_AXIS}).outputs[0] for cache, new in ((past_key, k), (past_value, v))]
        keys, values = (shared.valid(node, cache) for cache in present)
        attrs = {"scale": scale, "is_causal": 0, **({"softcap": softcap} if softcap else {})}
        y = add_node(graph, node, "Attention", [_heads_first(graph, node, q), keys, values, shared.visible(window),
                                                None, None, shared.nonpad], attrs).outputs[0]
        y = add_node(graph, node, "Reshape", [_heads_first(graph, node, y),
                                              constant_int64(graph, "const.merge_heads", [0, 0, -1])])
        for old, new in zip(node.outputs, [y.outputs[0], *present]):
            replace_value(old, new)
        graph.remove(node, safe=True)
    ctx.report.setdefault("kv_cache", {})["update"] = "TensorScatter"
    return len(nodes)


def _heads_first(graph: ir.Graph, before: ir.Node, x: ir.Value) -> ir.Value:
    return add_node(graph, before, "Transpose", [x], {"perm": HEADS_FIRST}).outputs[0]


class _Shared:
    """What every Attention reads besides its own tensors, built once before the first one."""

    def __init__(self, graph: ir.Graph, first: ir.Node):
        self.graph, self.first = graph, first
        self.past_lengths, seq_lengths = lengths(graph)
        self.nonpad = self._node("Add", self.past_lengths, seq_lengths)
        self.longest = self._node("ReduceMax", self.nonpad, keepdims=1)
        zero, one = self._scalar("const.scalar_0", 0), self._scalar("const.scalar_1", 1)
        self.k = self._node("Range", zero, self._node("Squeeze", self.longest), one)
        # q per column: past_lengths + i, capped at the row's last real position (padded columns)
        input_ids = next(v for v in graph.inputs if v.name == "input_ids")
        columns = self._node("Range", zero, self._node("Squeeze", self._node("Shape", input_ids, start=1, end=2)), one)
        axis_1 = constant_int64(graph, "const.axis_1", [1])
        q = self._node("Add", self._node("Unsqueeze", self.past_lengths, axis_1), columns)
        last = self._node("Unsqueeze", self._node("Sub", self.nonpad, one), axis_1)
        self.q = self._node("Unsqueeze", self._node("Min", q, last), constant_int64(graph, "const.axes_1_3", [1, 3]))
        self.causal = self._node("LessOrEqual", self.k, self.q)
        self._by_window: dict[int, ir.Value] = {0: self.causal}

    def valid(self, before: ir.Node, cache: ir.Value) -> ir.Value:
        """The cache's first `longest` positions."""
        starts = constant_int64(self.graph, "const.zero_1d", [0])
        axes = constant_int64(self.graph, "const.cache_axis", [CACHE_AXIS])
        return add_node(self.graph, before, "Slice", [cache, starts, self.longest, axes]).outputs[0]

    def visible(self, window: int) -> ir.Value:
        if window not in self._by_window:
            distance = self._node("Sub", self.q, self.k)
            inside = self._node("Less", distance, self._scalar(f"const.scalar_{window}", window))
            self._by_window[window] = self._node("And", self.causal, inside)
        return self._by_window[window]

    def _node(self, op: str, *inputs: ir.Value, **attrs) -> ir.Value:
        return add_node(self.graph, self.first, op, list(inputs), attrs).outputs[0]

    def _scalar(self, name: str, value: int) -> ir.Value:
        if name not in self.graph.initializers:
            add_initializer(self.graph, name, np.asarray(value, dtype=np.int64))
        return self.graph.initializers[name]
