"""Reduce* axes the trace computes from constants (a Reshape of Constant nodes, as torch.onnx writes
`mean(dim=-1)` outside the project's ops: Gemma 4's weightless norms) become initializers.
TensorRT's parser takes a reduction's axes only as a build-time constant ("Axis input must resolve
to a build-time constant"); other runtimes do not care, so only the tensorrt pipeline runs this."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import constant_int64
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "constant_axes"
_FOLDABLE = ("Constant", "Reshape")


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return config.v_norm or bool(config.num_experts)  # Gemma 4's weightless norms


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    count = 0
    for node in graph:
        if not node.op_type.startswith("Reduce") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        axes = _constant(node.inputs[1])
        if axes is None or node.inputs[1].is_initializer():
            continue
        values = [int(a) for a in np.asarray(axes).reshape(-1)]
        node.replace_input_with(1, constant_int64(graph, f"const.axes_{'_'.join(map(str, values))}", values))
        count += 1
    return count


def _constant(value: ir.Value) -> np.ndarray | None:
    """The value of an initializer, a Constant, or a Reshape of those; else None."""
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is None or node.op_type not in _FOLDABLE or node.domain != "":
        return None
    if node.op_type == "Constant":
        attr = next(iter(node.attributes.values()))
        return np.asarray(attr.value.numpy() if hasattr(attr.value, "numpy") else attr.value)
    data, shape = (_constant(v) for v in node.inputs[:2])
    return None if data is None or shape is None else np.reshape(data, [int(s) for s in shape])
