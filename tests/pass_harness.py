"""Run a pass on a tiny traced model and onnxruntime before and after it."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from gemma_export.checkpoints import open_source
from gemma_export.checkpoints.base import WeightSource
from gemma_export.export import pass_context, resolve_options
from gemma_export.frontend.trace import bind_weights, trace
from gemma_export.passes.context import ExportOptions, PassContext
from gemma_export.passes.ir_utils import remove_dead
from gemma_graphs.config import GemmaConfig


def traced(folder, options: ExportOptions | None = None) -> tuple[ir.Model, PassContext]:
    """A fresh copy of the checkpoint's traced model (traced once per test session: it takes seconds)."""
    proto, config, weights = _traced(str(folder))
    return ir.serde.deserialize_model(proto), pass_context(config, resolve_options(options or ExportOptions()),
                                                           weights=weights)


@functools.lru_cache(maxsize=None)
def _traced(folder: str) -> tuple[onnx.ModelProto, GemmaConfig, WeightSource]:
    source = open_source(folder)
    model = trace(source.config)
    bind_weights(model, source.weights)
    return ir.serde.serialize_model(model), source.config, source.weights


def apply(model: ir.Model, ctx: PassContext, *passes) -> tuple[ir.Model, list[int]]:
    """A copy of model with the passes applied in order, and each one's rewrite count."""
    model = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    counts = []
    for p in passes:
        counts.append(p.run(model, ctx))
        remove_dead(model)
    return model, counts


def run(model: ir.Model, feeds: dict, optimize: bool = True) -> dict[str, np.ndarray]:
    """optimize=False: onnxruntime runs the graph as written (no fusion, e.g. of DequantizeLinear +
    MatMul into a MatMulNBits that quantizes activations)."""
    proto = ir.serde.serialize_model(model)
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {k: v for k, v in feeds.items() if k in names})
    return dict(zip([o.name for o in session.get_outputs()], outputs))


def feeds(cfg, batch: int = 2, seq: int = 9, past: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "input_ids": rng.integers(3, cfg.vocab_size, size=(batch, seq)).astype(np.int64),
        "position_ids": np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1)),
        "attention_mask": np.ones((batch, past + seq), np.int64),
    }
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            out[f"past_{kind}.{i}"] = rng.standard_normal((batch, cfg.num_kv_heads, past, cfg.head_dim)).astype(np.float32)
    return out


def inplace_feeds(concat: dict[str, np.ndarray], max_seq_len: int, seed: int = 1,
                  windows: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    """The call `concat` (from feeds()) through the in-place interface: each past cache at the front
    of a static [batch, kv_heads, max_seq_len, head_dim] buffer whose tail holds other finite values;
    layer i in `windows` (ring_windows()) as a ring of that many slots, position p in slot p mod window."""
    rng = np.random.default_rng(seed)
    batch, seq = concat["input_ids"].shape
    past = concat["position_ids"][:, 0]
    out = {"input_ids": concat["input_ids"], "position_ids": concat["position_ids"], "past_lengths": past,
           "seq_lengths": np.full(batch, seq, np.int64)}
    for name, cache in concat.items():
        if name.startswith("past_"):
            window = (windows or {}).get(int(name.split(".")[1]))
            static = rng.standard_normal((*cache.shape[:2], window or max_seq_len, cache.shape[3])).astype(np.float32)
            for position, slot in cache_slots(cache.shape[2], window):
                static[:, :, slot] = cache[:, :, position]
            out[name] = static
    return out


def ring_windows(model: ir.Model, max_seq_len: int) -> dict[int, int]:
    """layer -> ring size, for the layers whose key cache is shorter than max_seq_len (a ring)."""
    return {int(v.name.split(".")[1]): v.shape[2] for v in model.graph.inputs
            if v.name.startswith("past_key.") and isinstance(v.shape[2], int) and v.shape[2] < max_seq_len}


def cache_slots(held: int, window: int | None) -> list[tuple[int, int]]:
    """(position, slot) of what a cache keeps of positions 0 .. held - 1: every position at its own
    index, or, in a ring of `window` slots, the last `window` positions, p at slot p mod window."""
    if not window:
        return [(p, p) for p in range(held)]
    return [(p, p % window) for p in range(max(0, held - window), held)]


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]
