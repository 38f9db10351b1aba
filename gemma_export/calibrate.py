"""The graph being compiled, run by onnxruntime over the built-in calibration text, for the pass
that acts on the graph's own activations (precision: the largest |value| of each tensor), and the
calibration token ids every measuring pass reads. Also the element type onnxruntime infers for
every value, which the precision pass needs for the nodes other passes created without types.
(The decisions that rest on a model-level measurement, --calibrate's scales and the recipes'
sensitivities, run the model in float64 instead: gemma_export/float64_reference.py.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Collection, Iterator

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from gemma_export.passes.context import PassContext
from gemma_export.texts import CALIBRATION
from gemma_runtime import interface

RANDOM_SEQUENCES, RANDOM_LENGTH = 6, 48  # without a tokenizer: seeded random ids
_WEIGHTLESS_MIN_ELEMENTS = 1024


def sequences(ctx: PassContext) -> list[list[int]]:
    """Token ids of the calibration text (BOS first), or seeded random ids when the source has no
    tokenizer; each at most max_seq_len long."""
    cfg, limit = ctx.config, ctx.options.max_seq_len
    if ctx.tokenizer is not None:
        return [ctx.tokenizer.encode(text)[:limit] for text in CALIBRATION]
    rng = np.random.default_rng(0)
    return [[cfg.bos_token_id, *rng.integers(3, cfg.vocab_size, RANDOM_LENGTH - 1).tolist()][:limit]
            for _ in range(RANDOM_SEQUENCES)]


def value_dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    """The element type of every node output, as onnxruntime infers it (no weight is read: large
    initializers become typed graph inputs of a throwaway copy)."""
    with without_data(model) as held:
        proto = ir.serde.serialize_model(model)
    graph = proto.graph
    infos = {vi.name: vi for vi in graph.value_info}
    for value in held:
        graph.input.append(infos[value.name])
    declared = {o.name for o in graph.output}
    for node in graph.node:
        graph.output.extend(onnx.ValueInfoProto(name=o) for o in node.output if o and o not in declared)
    del graph.value_info[:]  # onnxruntime infers them again, from the same schemas
    session = cpu_session(proto.SerializeToString(), optimize=False)
    return {o.name: _DTYPES.get(o.type, ir.DataType.UNDEFINED) for o in session.get_outputs()}


def cpu_session(model: str | bytes, threads: int | None = None, optimize: bool = True) -> ort.InferenceSession:
    """A quiet onnxruntime CPU session for the export's own measuring runs (a path or model bytes;
    threads None: onnxruntime's default)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(model: ir.Model, ctx: PassContext, values: list[ir.Value]) -> Iterator[list[np.ndarray]]:
    """For each calibration sequence (one prefill from an empty cache), the given values as
    onnxruntime computes them in the graph as it stands."""
    with tempfile.TemporaryDirectory(prefix="gemma-calibration-") as tmp:
        path = Path(tmp) / "calibration.onnx"
        extra = [v for v in values if not v.is_graph_output()]
        model.graph.outputs.extend(extra)
        try:
            ir.save(model, path, external_data=path.name + ".data")
        finally:
            for value in extra:
                model.graph.outputs.remove(value)
        session = cpu_session(str(path), threads=os.cpu_count() or 1)
        names = [v.name for v in values]
        for ids in sequences(ctx):
            yield session.run(names, prefill_feeds(model.graph, ids))


def prefill_feeds(graph: ir.Graph, ids: list[int]) -> dict[str, np.ndarray]:
    """Inputs for one prefill of `ids` from an empty cache, for either KV-cache interface."""
    n = len(ids)
    row = np.asarray([ids], np.int64)
    known = {**interface.concat_feeds(row, np.arange(n, dtype=np.int64)[None], np.ones((1, n), np.int64)),
             # the lm_head sees every position too
             **interface.inplace_feeds(row, np.zeros(1), np.full(1, n), np.arange(n)[None])}
    feeds = {}
    for value in graph.inputs:
        if value.name in known:
            feeds[value.name] = known[value.name]
        else:  # a KV cache: [batch, kv_heads, past or max_seq_len, head_dim], zeroed
            dims = [d if isinstance(d, int) else (1 if str(d) == interface.BATCH else 0) for d in value.shape]
            feeds[value.name] = np.zeros(dims, value.dtype.numpy())
    return feeds


@contextlib.contextmanager
def without_data(model: ir.Model, also: Collection[str] = ()) -> Iterator[list[ir.Value]]:
    """Large initializers (and those named in `also`) lose their data for the duration (the
    serializer then writes only their types and shapes); yields them."""
    held = {v: v.const_value for v in model.graph.initializers.values()
            if v.const_value is not None and (v.const_value.size >= _WEIGHTLESS_MIN_ELEMENTS or v.name in also)}
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
