"""A runnable point's graph in bisect (pass_bisect.py), kept to be run again, and what its values
mean: every traced value, and every value a group creates, gets value metadata saying what it is
(ir_utils.MEANING_PREFIX), which the passes' replace_value moves to the value that replaces it, so
two graphs' values are matched by meaning, not by name; each decoder layer's output is marked in
the traced graph (mark_layer_outputs)."""

from __future__ import annotations

import dataclasses
import re

import onnx
import onnx_ir as ir
import numpy as np

from gemma_export import ort_run
from gemma_export.passes.ir_utils import MEANING_PREFIX
from gemma_graphs.config import GemmaConfig
from gemma_graphs.roles import roles
from gemma_runtime.interface import LOGITS

MEANING = MEANING_PREFIX + "value"  # what a value is: its traced name, or the group that made it
LAYER_OUTPUT = MEANING_PREFIX + "layer_output"  # the decoder layer whose output a value is
SCOPES = "pkg.torch.onnx.name_scopes"


@dataclasses.dataclass
class Snapshot:
    """A point's graph, kept to be run again: the model proto (large tensors in the scratch file), its
    inputs, and its structure (node order, what each node read, what each value means)."""

    feeds: dict[str, np.ndarray]
    nodes: list[ir.Node]
    reads: dict[ir.Node, tuple]  # node -> what makes it itself: op, inputs, their tensors, attributes
    producer: dict[ir.Value, ir.Node]
    names: dict[str, str]  # meaning -> value name
    meaning: dict[ir.Value, str]
    layer_outputs: dict[int, ir.Value]
    logits: ir.Value
    opsets: dict[str, int]
    kept: list  # the objects `reads` refers to by id, kept alive
    proto: onnx.ModelProto | None = None  # set where the graph is run

    @classmethod
    def of(cls, model: ir.Model, ids: list[int]) -> Snapshot:
        graph = model.graph
        nodes = list(graph)
        reads, kept = {}, []
        for node in nodes:
            tensors = [v.const_value if v is not None else None for v in node.inputs]
            kept += [*node.inputs, *tensors]
            reads[node] = (node.op_type, node.domain, tuple(map(id, node.inputs)), tuple(map(id, tensors)),
                           repr(sorted((k, repr(a.value)) for k, a in node.attributes.items())))
        values = [v for node in nodes for v in node.outputs]
        meaning = {v: v.metadata_props[MEANING] for v in values if MEANING in v.metadata_props}
        layer_outputs = {int(v.metadata_props[LAYER_OUTPUT]): v for v in values if LAYER_OUTPUT in v.metadata_props}
        return cls(ort_run.prefill_feeds(graph, ids), nodes, reads,
                   {v: node for node in nodes for v in node.outputs}, {m: v.name for v, m in meaning.items()},
                   meaning, layer_outputs, next(v for v in graph.outputs if v.name == LOGITS),
                   dict(model.opset_imports), kept)

    def same_graph(self, other: Snapshot) -> bool:
        return self.nodes == other.nodes and [self.reads[n] for n in self.nodes] == [other.reads[n] for n in other.nodes] \
            and self.logits is other.logits and self.opsets == other.opsets

    def changed_since(self, node: ir.Node, before: Snapshot) -> bool:
        """Whether the group that made this graph from `before` created the node or rewired it."""
        return before.reads.get(node) != self.reads[node]

    def region(self, layer: int | str, layers: int) -> list[ir.Node]:
        """The nodes computing a layer's output (or the logits) beyond what the previous layer's
        output needs, in graph order."""
        end = self.logits if layer == LOGITS else self.layer_outputs.get(layer)
        start = self.layer_outputs.get(layers - 1 if layer == LOGITS else layer - 1)
        if end is None:
            return []
        needed = self._ancestors(end)
        if start is not None:
            needed -= self._ancestors(start)
        return [n for n in self.nodes if n in needed]

    def _ancestors(self, value: ir.Value) -> set[ir.Node]:
        seen, stack = set(), [value]
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and node not in seen:
                seen.add(node)
                stack.extend(v for v in node.inputs if v is not None)
        return seen


def mark_layer_outputs(graph: ir.Graph, cfg: GemmaConfig) -> None:
    """Marks each decoder layer's output in the traced graph: the one [batch, seq, hidden] float
    value the layer's nodes (by their torch module scope) compute and a node outside it reads; a
    layer with none, or several, stays unmarked (and is not compared)."""
    hidden = cfg.hidden_size
    layer_scope = re.compile(rf"'{re.escape(roles(cfg).layers)}\.(\d+)'")  # a layer's torch module path
    layer_of = {}
    for node in graph:
        scope = layer_scope.search(node.metadata_props.get(SCOPES, ""))
        layer_of[node] = int(scope.group(1)) if scope else None
    found: dict[int, list[ir.Value]] = {}
    for node, layer in layer_of.items():
        for value in node.outputs if layer is not None else ():
            shape = value.shape
            if value.dtype == ir.DataType.FLOAT and shape is not None and shape.rank() == 3 and shape[2] == hidden \
                    and any(layer_of.get(user) != layer for user, _ in value.uses()):
                found.setdefault(layer, []).append(value)
    for layer, values in found.items():
        if len(values) == 1:
            values[0].metadata_props[LAYER_OUTPUT] = str(layer)
