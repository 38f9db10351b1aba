"""The graph being compiled, run in onnxruntime on the CPU: the one place that serializes IR and
opens a session for it (calibration, precision's type inference, bisect's checks, the pass tests).

Large initializers are written once each (by tensor object: passes make new tensors rather than
change one) to a scratch TensorFile that every serialized graph refers to, so a graph saved again
after a pass costs only the tensors the pass made, and no graph is bound by protobuf's 2 GiB.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from gemma_export.tensors import as_streamed
from gemma_runtime import interface
from gemma_runtime.backends.ort_session import check_version

_WEIGHTLESS_MIN_ELEMENTS = 1024


def cpu_session(model: str | bytes, threads: int | None = None, optimize: bool = True) -> ort.InferenceSession:
    """A quiet onnxruntime CPU session for the export's own runs (a path or model bytes; threads
    None: onnxruntime's default; optimize False: the graph as written, nothing fused)."""
    check_version()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class TensorFile:
    """A scratch file of large tensors in a folder, each written once, that serialized graphs refer to."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "tensors.bin"
        self.path.touch()
        self.written: dict[int, tuple[int, int]] = {}  # id(tensor) -> (offset, length)
        self.kept: list = []  # the tensors, so that no id is reused

    def external(self, value: ir.Value) -> onnx.TensorProto:
        """The initializer's TensorProto, its data in this file."""
        tensor = value.const_value
        if id(tensor) not in self.written:
            with self.path.open("ab") as f:
                f.write(b"\0" * (-f.tell() % 64))
                offset = f.tell()
                as_streamed(tensor).tofile(f)
                self.written[id(tensor)] = (offset, f.tell() - offset)
            self.kept.append(tensor)
        offset, length = self.written[id(tensor)]
        proto = onnx.TensorProto(name=value.name, dims=list(tensor.shape.numpy()), data_type=int(tensor.dtype),
                                 data_location=onnx.TensorProto.EXTERNAL)
        for key, text in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            proto.external_data.add(key=key, value=text)
        return proto


def model_proto(model: ir.Model, tensors: TensorFile | None = None) -> onnx.ModelProto:
    """The model as it stands; with `tensors`, its large initializers' data in that file."""
    if tensors is None:
        return ir.serde.serialize_model(model)
    with without_data(model) as large:
        proto = ir.serde.serialize_model(model)
    proto.graph.initializer.extend(tensors.external(value) for value in large)
    return proto


def session(proto: onnx.ModelProto, outputs: Sequence[str] = (), folder: Path | None = None,
            threads: int | None = None, optimize: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session of the graph with the named values (graph outputs or not) among
    its outputs. folder: where the graph is saved to be opened (the folder of the TensorFile its
    initializers refer to); None: opened from bytes."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    declared = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(outputs) if n not in declared)
    if folder is None:
        return cpu_session(model.SerializeToString(), threads, optimize)
    path = folder / "graph.onnx"
    onnx.save(model, path)
    try:
        return cpu_session(str(path), threads, optimize)
    finally:
        path.unlink()


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: Sequence[str],
        folder: Path | None = None) -> dict[str, np.ndarray]:
    """The named values, graph outputs or not, for these feeds."""
    names = list(dict.fromkeys(outputs))
    return dict(zip(names, session(proto, names, folder).run(names, feeds)))


def magnitudes(proto: onnx.ModelProto, names: Sequence[str], folder: Path | None = None,
               threads: int | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A run of the graph that returns, for each named value, its largest |element| (-inf where it
    is empty): one scalar per value, so no intermediate outlives its use (an image encoder's
    attention maps, all kept, would not fit in memory)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    outputs = []
    for i, name in enumerate(names):
        magnitude, largest = f"gemma_export.probe.{i}.abs", f"gemma_export.probe.{i}.max"
        model.graph.node.extend([onnx.helper.make_node("Abs", [name], [magnitude]),
                                 onnx.helper.make_node("ReduceMax", [magnitude], [largest], keepdims=0)])
        outputs.append(largest)
    opened = session(model, outputs, folder, threads)
    return lambda feeds: np.asarray(opened.run(outputs, feeds), np.float64).reshape(len(outputs))


def prefill_feeds(graph: ir.Graph, ids: list[int]) -> dict[str, np.ndarray]:
    """Inputs for one prefill of `ids` from an empty cache, for either KV-cache interface."""
    n = len(ids)
    row = np.asarray([ids], np.int64)
    known = {**interface.concat_feeds(row, np.arange(n, dtype=np.int64)[None], np.ones((1, n), np.int64)),
             # the lm_head sees every position too
             **interface.inplace_feeds(row, np.zeros(1), np.full(1, n), np.arange(n)[None]),
             interface.LOOKAHEAD: np.zeros((1, n), np.int64)}  # a media decoder's: text only, spliced = 0
    feeds = {}
    for value in graph.inputs:
        if value.name in known:
            feeds[value.name] = known[value.name]
        else:  # a KV cache: [batch, kv_heads, past or max_seq_len, head_dim], zeroed
            dims = [d if isinstance(d, int) else (1 if str(d) == interface.BATCH else 0) for d in value.shape]
            feeds[value.name] = np.zeros(dims, value.dtype.numpy())
    return feeds


def value_dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    """The element type of every node output, as onnxruntime infers it (no weight is read: large
    initializers become typed graph inputs of a throwaway copy)."""
    with without_data(model) as held:
        proto = ir.serde.serialize_model(model)
    graph = proto.graph
    infos = {vi.name: vi for vi in graph.value_info}
    for value in held:
        graph.input.append(infos[value.name])
    del graph.value_info[:]  # onnxruntime infers them again, from the same schemas
    every = [o for node in graph.node for o in node.output if o]
    opened = session(proto, every, optimize=False)
    return {o.name: _DTYPES.get(o.type, ir.DataType.UNDEFINED) for o in opened.get_outputs()}


@contextlib.contextmanager
def without_data(model: ir.Model) -> Iterator[list[ir.Value]]:
    """Large initializers lose their data for the duration (the serializer then writes only their
    types and shapes); yields them."""
    held = {v: v.const_value for v in model.graph.initializers.values()
            if v.const_value is not None and v.const_value.size >= _WEIGHTLESS_MIN_ELEMENTS}
    serde_log = logging.getLogger("onnx_ir.serde")
    level = serde_log.level
    serde_log.setLevel(logging.ERROR)  # it warns of each initializer without data
    for value in held:
        value.const_value = None
    try:
        yield list(held)
    finally:
        for value, tensor in held.items():
            value.const_value = tensor
        serde_log.setLevel(level)


_DTYPES = {f"tensor({name})": dtype for name, dtype in [
    ("float", ir.DataType.FLOAT), ("float16", ir.DataType.FLOAT16), ("bfloat16", ir.DataType.BFLOAT16),
    ("double", ir.DataType.DOUBLE), ("int64", ir.DataType.INT64), ("int32", ir.DataType.INT32),
    ("int8", ir.DataType.INT8), ("uint8", ir.DataType.UINT8), ("bool", ir.DataType.BOOL),
    ("int4", ir.DataType.INT4), ("uint4", ir.DataType.UINT4)]}
