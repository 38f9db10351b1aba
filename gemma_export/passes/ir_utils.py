"""Small helpers shared by the passes for building and finding nodes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

# Value metadata under this prefix says what a value means, not which object holds it: replace_value
# moves it to the replacement. gemma_export/verify/snapshot.py follows values through the passes by it.
MEANING_PREFIX = "gemma_export."


def add_node(graph: ir.Graph, before: ir.Node, op_type: str, inputs: list, attributes: dict | None = None,
             *, domain: str = "", num_outputs: int = 1, name: str | None = None) -> ir.Node:
    node = ir.Node(domain, op_type, inputs, attributes=[ir.convenience.convert_attribute(k, v)
                                                         for k, v in (attributes or {}).items()],
                   num_outputs=num_outputs, name=name)
    graph.insert_before(before, node)
    return node


def add_initializer(graph: ir.Graph, name: str, tensor: ir.TensorProtocol | np.ndarray) -> ir.Value:
    if isinstance(tensor, np.ndarray):
        tensor = ir.tensor(tensor, name=name)
    tensor.name = name
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    graph.register_initializer(value)
    return value


def constant_int64(graph: ir.Graph, name: str, values: list[int]) -> ir.Value:
    """A shared int64 initializer (reused when it already exists)."""
    if name in graph.initializers:
        return graph.initializers[name]
    return add_initializer(graph, name, np.asarray(values, dtype=np.int64))


def initializer_of(value: ir.Value | None) -> ir.Value | None:
    """The value itself when it is an initializer of the main graph."""
    if value is not None and value.is_initializer() and value.const_value is not None:
        return value
    return None


def remove_dead(model: ir.Model) -> None:
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    RemoveUnusedNodesPass()(model)


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Every use of old, graph outputs included, reads new; a graph output keeps its name, and
    new takes old's MEANING_PREFIX metadata."""
    output_name = old.name if old.is_graph_output() else None
    new.shape = new.shape or old.shape
    new.type = new.type or old.type
    for key in [k for k in old.metadata_props if k.startswith(MEANING_PREFIX)]:
        new.metadata_props[key] = old.metadata_props.pop(key)
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if output_name is not None:
        old.name = f"{output_name}.replaced"
        new.name = output_name


def project_nodes(graph: ir.Graph, op_type: str | tuple[str, ...]) -> list[ir.Node]:
    """The graph's nodes of the project's custom ops of that type (or types), in graph order (a
    list: safe to rewrite while iterating)."""
    from gemma_export.frontend.onnx_ops import DOMAIN
    types = (op_type,) if isinstance(op_type, str) else op_type
    return [n for n in graph if n.domain == DOMAIN and n.op_type in types]
