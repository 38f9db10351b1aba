"""GemmaAttention over the in-place cache (after inplace_cache_io) -> standard ops, TensorScatter
(opset 24) and Attention (opset 24, q scale and softcap as attributes). Two cache forms:

Full-length (global layers, and sliding layers whose window is not shorter than the cache):
TensorScatter writes the new keys and values at past_lengths, then Attention
(nonpad_kv_seqlen = past_lengths + seq_lengths) reads the cache's first `longest` positions,
longest = the batch's largest past_lengths + seq_lengths. The Slice is for speed: onnxruntime's
CPU kernel reads every key it is given whatever nonpad_kv_seqlen says, so a decode step early in
a long cache would otherwise pay for the whole cache.

Window-sized (targets with ring_caches, `onnx`: sliding layers, window < max_seq_len): the cache is a ring of
`window` slots, position p in slot p mod window. Attention reads the ring's filled slots followed
by the call's own new keys (Concat), each key's position computed from past_lengths, so the order
of the slots does not matter; then TensorScatter (mode circular) writes the row's last min(seq, window) positions,
gathered from that concatenation: a row shorter than the call (right padding) rewrites slots it
already holds rather than writing its padding over keys it still needs. No write exceeds the
ring, so no slot is written twice in a call.

A KV-shared layer (Gemma 4: its past is an earlier layer's present) attends to exactly the keys,
values and mask that layer attended to, and writes no cache.

Visibility is a boolean mask [batch, 1, seq, keys], one per window size, shared by the layers:
key at position j is visible to the query in column i of row b iff j <= q and (no window, or
q - j < window), q = past_lengths[b] + i; an empty ring slot has a position no query reaches. A
media decoder's block layers (GemmaBlockAttention) see j <= q + lookahead[b, i] instead of j <= q,
so an image's tokens see the whole image (one mask more per window size).
Attention's is_causal is not used: it puts query i at nonpad_kv_seqlen - seq + i, which in a
right-padded row (seq_lengths[b] < seq) hides keys from the real queries. A padded column
(i >= seq_lengths[b]) takes the row's last real position as its q, so that no query row is ever
fully masked (runtimes disagree on what such a row gives) and what it writes stays finite.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.inplace_cache_io import MASK_INPUT, attention_nodes, lengths
from gemma_export.passes.ir_utils import add_initializer, add_node, constant_int64, replace_value
from gemma_export.frontend.onnx_ops import BLOCK_ATTENTION
from gemma_runtime.interface import INPUT_IDS, LOOKAHEAD

NAME = "attention_onnx"
REQUIRES = ("set_opset", "inplace_cache_io")  # TensorScatter and Attention are opset 24
HEADS_FIRST = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]
CACHE_AXIS = 2
NEVER = 2 ** 62  # the position of an empty ring slot: after every query


def run(model: ir.Model, ctx: PassContext) -> int:
    nodes = []
    for node in attention_nodes(model.graph):
        if len(node.inputs) > MASK_INPUT and node.inputs[MASK_INPUT] is not None:
            ctx.left_alone(NAME, node.name, "it still takes an attention mask: not on the in-place cache interface")
        else:
            nodes.append(node)
    if nodes:
        lowering = StandardAttention(model.graph, nodes[0], ctx)
        for node in nodes:
            lowering.lower(node, rings=ctx.target.ring_caches)
    return len(nodes)


@dataclasses.dataclass
class Attended:
    """What a layer attended to: keys, values and the Attention inputs after them (mask, ...).
    A layer that shares its cache (Gemma 4's KV sharing) attends to the same."""

    keys: ir.Value
    values: ir.Value
    rest: list[ir.Value | None]


class StandardAttention:
    """Lowers GemmaAttention nodes to TensorScatter + Attention, layer after layer. It remembers
    what each cache's writer attended to (by the cache value the writer's present became), so a
    layer whose past is another layer's present attends to exactly that, and writes nothing."""

    def __init__(self, graph: ir.Graph, first: ir.Node, ctx: PassContext):
        self.graph, self.ctx = graph, ctx
        self.shared = _Shared(graph, first)
        self.attended: dict[ir.Value, Attended] = {}

    def lower(self, node: ir.Node, rings: bool) -> None:
        graph, shared = self.graph, self.shared
        q, k, v, past_key, past_value = node.inputs[:5]
        block = node.op_type == BLOCK_ATTENTION
        shared.first = node  # what it builds from here on goes before this layer
        scale, softcap, window = (node.attributes.get_float("scale"), node.attributes.get_float("softcap"),
                                  node.attributes.get_int("window"))
        attrs = {"scale": scale, "is_causal": 0, **({"softcap": softcap} if softcap else {})}
        q = _heads_first(graph, node, q)
        present = []
        if past_key in self.attended:  # a KV-shared layer: another layer's cache, no new keys
            seen = self.attended[past_key]
        elif rings and 0 < window < self.ctx.options.max_seq_len:
            k, v = (_heads_first(graph, node, x) for x in (k, v))
            ring = shared.ring(window, past_key.shape[1], past_key.shape[3])
            keys, values = (add_node(graph, node, "Concat", [shared.leading(node, cache, ring.filled), new],
                                     {"axis": CACHE_AXIS})
                            .outputs[0] for cache, new in ((past_key, k), (past_value, v)))
            seen = Attended(keys, values, [ring.visible(block)])
            present = [ring.write(node, cache, both) for cache, both in ((past_key, keys), (past_value, values))]
            for value in (past_key, past_value, *node.outputs[1:3]):
                value.shape = ir.Shape([value.shape[0], value.shape[1], window, value.shape[3]])
        else:
            k, v = (_heads_first(graph, node, x) for x in (k, v))
            present = [add_node(graph, node, "TensorScatter", [cache, new, shared.past_lengths],
                                {"axis": CACHE_AXIS}).outputs[0] for cache, new in ((past_key, k), (past_value, v))]
            seen = self.full_length(node, *present, window, block)
        y = add_node(graph, node, "Attention", [q, seen.keys, seen.values, *seen.rest], attrs).outputs[0]
        y = add_node(graph, node, "Reshape", [_heads_first(graph, node, y),
                                              constant_int64(graph, "const.merge_heads", [0, 0, -1])])
        for old, new in zip(node.outputs, [y.outputs[0], *present]):
            replace_value(old, new)
        if present:
            self.attended[present[0]] = seen
        graph.remove(node, safe=True)

    def full_length(self, before: ir.Node, key_cache: ir.Value, value_cache: ir.Value, window: int,
                    block: bool = False) -> Attended:
        """A full-length cache after this call's write: its first `longest` positions, visible by
        position, window and (block) lookahead, nonpad_kv_seqlen for the rest."""
        shared = self.shared
        shared.first = before
        keys, values = (shared.leading(before, cache, shared.longest) for cache in (key_cache, value_cache))
        return Attended(keys, values, [shared.visible(window, block), None, None, shared.nonpad])

    def remember(self, key_cache: ir.Value, attended: Attended) -> None:
        """Another lowering (GroupQueryAttention) wrote key_cache: what its readers attend to."""
        self.attended[key_cache] = attended


def _heads_first(graph: ir.Graph, before: ir.Node, x: ir.Value) -> ir.Value:
    return add_node(graph, before, "Transpose", [x], {"perm": HEADS_FIRST}).outputs[0]


class _Shared:
    """What every Attention reads besides its own tensors, built once before the first one; a mask
    first needed by a later layer is built before that layer (`first` follows the lowering)."""

    def __init__(self, graph: ir.Graph, first: ir.Node):
        self.graph, self.first = graph, first
        self.past_lengths, seq_lengths = lengths(graph)
        self.nonpad = self.node("Add", self.past_lengths, seq_lengths)
        self.longest = self.node("ReduceMax", self.nonpad, keepdims=1)
        self.zero, self.one = self.scalar(0), self.scalar(1)
        self.k = self.node("Range", self.zero, self.node("Squeeze", self.longest), self.one)
        # q per column: past_lengths + i, capped at the row's last real position (padded columns)
        input_ids = next(v for v in graph.inputs if v.name == INPUT_IDS)
        self.width = self.node("Shape", input_ids, start=1, end=2)
        self.columns = self.node("Range", self.zero, self.node("Squeeze", self.width), self.one)
        self.axis_1 = constant_int64(graph, "const.axis_1", [1])
        q = self.node("Add", self.rows(self.past_lengths), self.columns)
        last = self.rows(self.node("Sub", self.nonpad, self.one))
        self.q = self.node("Unsqueeze", self.node("Min", q, last), constant_int64(graph, "const.axes_1_3", [1, 3]))
        # a media decoder's block layers: the last position each column sees (an image's tokens see the image)
        lookahead = next((v for v in graph.inputs if v.name == LOOKAHEAD), None)
        self.until = None if lookahead is None else self.node(
            "Add", self.q, self.node("Unsqueeze", lookahead, constant_int64(graph, "const.axes_1_3", [1, 3])))
        self._by_window: dict[tuple[int, bool], ir.Value] = {(0, False): self.node("LessOrEqual", self.k, self.q)}
        self._rings: dict[tuple[int, int, int], _Ring] = {}

    def leading(self, before: ir.Node, cache: ir.Value, end: ir.Value) -> ir.Value:
        """The cache's first `end` positions."""
        return add_node(self.graph, before, "Slice", [cache, constant_int64(self.graph, "const.zero_1d", [0]), end,
                                                      constant_int64(self.graph, "const.cache_axis", [CACHE_AXIS])]
                        ).outputs[0]

    def visible(self, window: int, block: bool = False) -> ir.Value:
        if (window, block) not in self._by_window:
            self._by_window[window, block] = self.window_mask(self.k, window, block)
        return self._by_window[window, block]

    def window_mask(self, keys: ir.Value, window: int, block: bool) -> ir.Value:
        """keys: the keys' positions, broadcastable to [batch, 1, 1, keys]; window 0: none; block:
        a column sees up to its lookahead."""
        if not window:
            return self.node("LessOrEqual", keys, self.until if block else self.q)
        inside = self.node("Less", self.node("Sub", self.q, keys), self.scalar(window))
        return self.node("And", self.node("LessOrEqual", keys, self.until if block else self.q), inside)

    def ring(self, window: int, heads: int, dims: int) -> _Ring:
        if (window, heads, dims) not in self._rings:
            self._rings[window, heads, dims] = _Ring(self, window, heads, dims)
        return self._rings[window, heads, dims]

    def rows(self, per_row: ir.Value) -> ir.Value:
        """[batch] -> [batch, 1]."""
        return self.node("Unsqueeze", per_row, self.axis_1)

    def node(self, op: str, *inputs: ir.Value, **attrs) -> ir.Value:
        return add_node(self.graph, self.first, op, list(inputs), attrs).outputs[0]

    def scalar(self, value: int) -> ir.Value:
        name = f"const.scalar_{value}"
        if name not in self.graph.initializers:
            add_initializer(self.graph, name, np.asarray(value, dtype=np.int64))
        return self.graph.initializers[name]


class _Ring:
    """The index arithmetic of the window-sized caches of one window size, shared by their layers.
    In a layer, keys = Concat(the ring's first `filled` slots, the call's new keys)."""

    def __init__(self, shared: _Shared, window: int, heads: int, dims: int):
        self.shared = shared
        node, size = shared.node, shared.scalar(window)
        past = shared.rows(shared.past_lengths)  # [B, 1]
        # slots read: min(longest past, window) (a row's own filled slots are 0 .. min(past, window) - 1)
        self.filled = node("Min", node("ReduceMax", shared.past_lengths, keepdims=1),
                           constant_int64(shared.graph, f"const.window_{window}", [window]))
        slots = node("Range", shared.zero, node("Squeeze", self.filled), shared.one)
        # slot r holds the latest position before past that is r mod window
        before = node("Sub", past, shared.one)
        held = node("Sub", before, node("Mod", node("Sub", before, slots), size))
        held = node("Where", node("Less", slots, past), held, shared.scalar(NEVER))
        positions = node("Concat", held, node("Add", past, shared.columns), axis=1)  # [B, keys]
        self.positions = node("Unsqueeze", positions, constant_int64(shared.graph, "const.axes_1_2", [1, 2]))
        self.window = window
        self._visible: dict[bool, ir.Value] = {}
        # written: each row's last min(seq, window) positions, from where they lie in the keys
        count = node("Min", shared.width, constant_int64(shared.graph, f"const.window_{window}", [window]))
        end = shared.rows(shared.nonpad)
        written = node("Add", node("Sub", end, count),
                       node("Range", shared.zero, node("Squeeze", count), shared.one))  # [B, count]
        from_new = node("Add", self.filled, node("Sub", written, past))
        from_ring = node("Mod", written, size)  # a negative position (a short row): any slot, never read
        source = node("Where", node("Less", written, past), from_ring, from_new)
        source = node("Min", source, node("Sub", node("Add", self.filled, shared.width), shared.one))
        self.source = node("Expand", node("Unsqueeze", source, constant_int64(shared.graph, "const.axes_1_3", [1, 3])),
                           constant_int64(shared.graph, f"const.ring_index_{heads}_{dims}", [1, heads, 1, dims]))
        self.start = node("Mod", node("Sub", shared.nonpad, node("Squeeze", count)), size)

    def visible(self, block: bool) -> ir.Value:
        if block not in self._visible:
            self._visible[block] = self.shared.window_mask(self.positions, self.window, block)
        return self._visible[block]

    def write(self, before: ir.Node, cache: ir.Value, keys: ir.Value) -> ir.Value:
        graph = self.shared.graph
        update = add_node(graph, before, "GatherElements", [keys, self.source], {"axis": CACHE_AXIS}).outputs[0]
        return add_node(graph, before, "TensorScatter", [cache, update, self.start],
                        {"axis": CACHE_AXIS, "mode": "circular"}).outputs[0]
