"""fp16 / bf16 (`--dtype`): every node computes in the low dtype except what Gemma needs in fp32,
with a Cast wherever a value crosses between the two.

Kept in fp32:
- values that would overflow fp16. The fp32 graph runs over the built-in calibration text
  (gemma_export/calibrate.py) and every tensor whose largest |value| exceeds FP16_LIMIT stays fp32,
  with every node that reads or writes it. On the real Gemma 3 270M that is the residual stream
  (up to 1.04e5 at the BOS position, past fp16's 65504) and the post-FFW norm outputs added to it.
- the logits: the nodes after the lm_head product (reshape, soft-capping) and the output; an
  embedding model's output (its graph computes in the low dtype and casts the unit vectors to fp32).
- norm statistics and softmax, inside the fused kernels: the norms carry stash_type=1 (fp32
  statistics), ONNX Attention gets softmax_precision=FLOAT, and GroupQueryAttention accumulates its
  softmax in fp32.
bf16 shares fp32's range, so it needs no calibration. onnxruntime's CPU provider has no bf16 kernels:
for the CPU targets (ort-cpu, onnx) bf16 means bf16 storage with fp32 compute, a Cast after each
weight (folded by onnxruntime at load), and the KV cache stays fp32.

Weights (MatMul/Gemm B, the embedding) are stored in the low dtype even where fp32 nodes read them
(then through a Cast); small tensors an fp32 node reads (norm scales, rotary tables) stay fp32.

The media encoders are lowered by the same rules (lower(), called by gemma_export/export_media.py),
their overflow measured over built-in synthetic images and clips (gemma_export/calibrate_media.py);
their inputs and outputs stay fp32, and their norms and softmax, traced as plain ops, compute in the
low dtype. On the tiny test checkpoints that costs as much as transformers' own fp16 towers.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import onnx_ir as ir

from gemma_export import calibrate, ort_run
from gemma_export.tensors import mapped, numpy_dtype
from gemma_export.errors import GemmaExportError
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig
from gemma_runtime.interface import EMBEDDINGS, LOGITS

NAME = "precision"
LOW = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
F32 = ir.DataType.FLOAT
# 65504 / 16. Over the calibration text the largest |value| of a tensor was up to 6.1x below what
# the same tensor reached in a 2048-token prompt (real Gemma 3 270M); 16x leaves room for that.
FP16_LIMIT = 2.0 ** 12
WEIGHT_INPUTS = {("MatMul", 1), ("Gemm", 1), ("Gather", 0)}
ANY_INPUT = ("Cast", "Shape", "Size")  # read any dtype: never cast in front of them
PRODUCTS = ("MatMul", "Gemm", "MatMulNBits")
ATTENTION = ("GroupQueryAttention", "Attention", "TensorScatter")  # share the cache dtype
NORMS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization")


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return options.dtype != "fp32"


def run(model: ir.Model, ctx: PassContext) -> int:
    options = ctx.options
    if options.dtype == "fp32":
        return 0
    report, rewrites = lower(model, options.dtype, ctx.target.bf16_compute,
                             lambda values: calibrate.largest(model, calibrate.prefills(model, ctx), values),
                             fp32_boundary=any(v.name == EMBEDDINGS for v in model.graph.outputs))
    ctx.report["precision"] = report
    return rewrites


# values -> per calibration input, each value's largest |element| in the fp32 graph
Measure = Callable[[list[ir.Value]], Iterable[np.ndarray]]


def lower(model: ir.Model, dtype: str, bf16_compute: bool, measure: Measure,
          fp32_boundary: bool = False) -> tuple[dict, int]:
    """The model in dtype by the rules above; measure() finds what overflows. fp32_boundary: the graph's float
    inputs and outputs stay fp32 (Casts inside), for graphs fed and read where numpy has no bf16.
    Returns (the report, nodes and initializers converted)."""
    graph = model.graph
    low = LOW[dtype]
    inferred = ort_run.value_dtypes(model)

    def is_float(v: ir.Value | None) -> bool:
        if v is None:
            return False
        if v.producer() is None:
            return v.dtype == F32
        return inferred.get(v.name) == F32

    hot: dict[str, float] = {}
    if dtype == "bf16" and not bf16_compute:
        fp32_nodes = set(graph)
    else:
        if dtype == "fp16":
            hot = _overflowing(measure, [v for n in graph for v in n.outputs if is_float(v) and not v.is_graph_output()])
        fp32_nodes = _fp32_nodes(graph, hot, is_float)
    low_nodes = [n for n in graph if n not in fp32_nodes]
    new_dtype: dict[ir.Value, ir.DataType] = {}
    converted = _initializers(graph, low, fp32_nodes, is_float, new_dtype)
    for value in graph.inputs:
        if is_float(value):
            users = [n for n, _ in value.uses() if n.op_type not in ANY_INPUT]
            new_dtype[value] = low if any(n not in fp32_nodes for n in users) and not fp32_boundary else F32
    for node in graph:
        mode = F32 if node in fp32_nodes else low
        for out in node.outputs:
            if is_float(out) and (out.uses() or out.is_graph_output()):
                new_dtype[out] = mode
            elif is_float(out):
                out.type = None  # an unread output (norm statistics): onnxruntime knows its type
        if mode == low:
            _lower_attributes(node, low)
    casts = _insert_casts(graph, fp32_nodes, low, is_float, new_dtype)
    for value, dtype_ in new_dtype.items():
        value.type = ir.TensorType(dtype_)
    if fp32_boundary:
        casts += _fp32_outputs(graph)
    return _report(low, hot, graph, new_dtype, casts), len(low_nodes) + converted


def _overflowing(measure: Measure, values: list[ir.Value]) -> dict[str, float]:
    """name -> largest |value| over the calibration inputs, for the values above FP16_LIMIT."""
    largest = np.zeros(len(values))
    for magnitudes in measure(values):
        largest = np.maximum(largest, magnitudes)
    return {v.name: float(m) for v, m in zip(values, largest) if not m <= FP16_LIMIT}  # NaN counts too


def _fp32_nodes(graph: ir.Graph, hot: dict[str, float], is_float) -> set[ir.Node]:
    keep = {n for n in graph if any(v is not None and v.name in hot for v in [*n.inputs, *n.outputs])}
    if any(v.name == LOGITS for v in graph.outputs):
        keep |= _logits_region(graph, is_float)
    attention = [n for n in graph if n.op_type in ATTENTION]
    if any(n in keep for n in attention):
        keep |= set(attention)  # one KV-cache dtype for every layer
    return keep


def _logits_region(graph: ir.Graph, is_float) -> set[ir.Node]:
    """The nodes between the lm_head product and the logits output."""
    region = set()
    logits = next(v for v in graph.outputs if v.name == LOGITS)
    node = logits.producer()
    while node is not None and node.op_type not in PRODUCTS:
        region.add(node)
        data = next((v for v in node.inputs if is_float(v) and v.producer() is not None), None)
        node = data.producer() if data is not None else None
    return region


def _initializers(graph: ir.Graph, low: ir.DataType, fp32_nodes: set[ir.Node], is_float,
                  new_dtype: dict[ir.Value, ir.DataType]) -> int:
    """Stores each float initializer in the low dtype where a low node reads it, and weights
    always (an fp32 node then reads them through a Cast); small tensors fp32 nodes read stay."""
    converted = 0
    for value in list(graph.initializers.values()):
        if not is_float(value):
            continue
        uses = [(n, i) for n, i in value.uses() if n.op_type not in ANY_INPUT]
        low_uses = [(n, i) for n, i in uses if n not in fp32_nodes]
        fp32_uses = [(n, i) for n, i in uses if n in fp32_nodes]
        weight = any((n.op_type, i) in WEIGHT_INPUTS for n, i in uses)
        if not low_uses and not weight:
            new_dtype[value] = F32
            continue
        if fp32_uses and not weight:  # both: a low copy beside the fp32 original
            copy = add_initializer(graph, f"{value.name}.{_suffix(low)}", _cast(value.const_value, low))
            new_dtype[value], new_dtype[copy] = F32, low
            for n, i in low_uses:
                n.replace_input_with(i, copy)
        else:
            value.const_value = _cast(value.const_value, low)
            new_dtype[value] = low
        converted += 1
    return converted


def _cast(tensor: ir.TensorProtocol, dtype: ir.DataType) -> ir.TensorProtocol:
    target = numpy_dtype(dtype)

    def convert(rows: np.ndarray) -> np.ndarray:
        out = rows.astype(target)
        if not np.isfinite(out.astype(np.float32)).all():
            raise GemmaExportError(f"{tensor.name}: values beyond {dtype.name.lower()}'s range")
        return out

    return mapped(tensor, convert, tensor.name, dtype=dtype)


def _lower_attributes(node: ir.Node, low: ir.DataType) -> None:
    """Attributes that name or hold an fp32 value, for a node computing in the low dtype."""
    if node.op_type == "Cast" and node.attributes.get_int("to") == F32:
        node.attributes["to"] = ir.AttrInt64("to", low)
    elif node.op_type == "Constant" and "value" in node.attributes:
        tensor = node.attributes["value"].as_tensor()
        if tensor.dtype == F32:
            array = tensor.numpy().astype(numpy_dtype(low))
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array, dtype=low, name=tensor.name))
    elif node.op_type == "Attention" and node.domain == "":
        node.attributes["softmax_precision"] = ir.AttrInt64("softmax_precision", F32)


def _insert_casts(graph: ir.Graph, fp32_nodes: set[ir.Node], low: ir.DataType, is_float,
                  new_dtype: dict[ir.Value, ir.DataType]) -> int:
    made: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
    for node in list(graph):
        if node.op_type in ANY_INPUT:
            continue
        want = F32 if node in fp32_nodes else low
        for i, value in enumerate(node.inputs):
            if not is_float(value) or new_dtype.get(value, F32) == want:
                continue
            if (value, want) not in made:
                cast = add_node(graph, node, "Cast", [value], {"to": want})
                cast.outputs[0].shape = value.shape
                new_dtype[cast.outputs[0]] = want
                made[(value, want)] = cast.outputs[0]
            node.replace_input_with(i, made[(value, want)])
    for value in graph.outputs:  # an output whose producer computes in the other dtype
        if value.name == LOGITS and new_dtype.get(value) != F32:
            raise AssertionError("the logits are not computed in fp32")
    return len(made)


def _suffix(dtype: ir.DataType) -> str:
    return {ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}[dtype]


def _fp32_outputs(graph: ir.Graph) -> int:
    """A Cast to fp32 in front of each low-precision graph output, which keeps its name."""
    casts = 0
    for i, value in enumerate(list(graph.outputs)):
        if value.dtype not in LOW.values():
            continue
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", F32)])
        graph.append(cast)
        name, value.name = value.name, f"{value.name}.{_suffix(value.dtype)}"
        out = cast.outputs[0]
        out.name, out.shape, out.type = name, value.shape, ir.TensorType(F32)
        graph.outputs[i] = out
        casts += 1
    return casts


def _report(low: ir.DataType, hot: dict[str, float], graph: ir.Graph, new_dtype: dict[ir.Value, ir.DataType],
            casts: int) -> dict:
    computed = [n for n in graph if any(new_dtype.get(v) == low for v in n.outputs)]
    return {
        "dtype": _suffix(low),
        "compute": _suffix(low) if computed else "fp32",
        "fp16_limit": FP16_LIMIT if low == ir.DataType.FLOAT16 else None,
        "kept_fp32": {_describe(graph, name): round(m, 1) for name, m in sorted(hot.items(), key=lambda kv: -kv[1])},
        "fp32_by_rule": _fp32_rules(graph),
        "low_precision_nodes": len(computed),
        "casts": casts,
    }


def _fp32_rules(graph: ir.Graph) -> list[str]:
    """What stays fp32 by rule in this graph: the logits, and the statistics of the fused kernels it
    has (a norm or softmax spelled out in plain ops, as a traced encoder's are, computes in the low
    dtype)."""
    ops = {n.op_type for n in graph}
    return [*([LOGITS] if any(v.name == LOGITS for v in graph.outputs) else []),
            *(["norm statistics (stash_type=1)"] if ops & set(NORMS) else []),
            *(["attention softmax"] if ops & set(ATTENTION[:2]) else [])]


def _describe(graph: ir.Graph, name: str) -> str:
    """A kept value as `name: Op output i (weight it reads)`, findable in the graph and the model."""
    for node in graph:
        for i, out in enumerate(node.outputs):
            if out.name == name:
                weights = [v.name for v in node.inputs if v is not None and v.is_initializer()]
                return f"{name}: {node.op_type} output {i}" + (f" ({weights[0]})" if weights else "")
    return name
