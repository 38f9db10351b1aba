"""Run a pass on a tiny traced model and onnxruntime before and after it."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir

from gemma_export import ort_run
from gemma_export.checkpoints import open_source
from gemma_export.checkpoints.base import WeightSource
from gemma_export.export import pass_context, resolve_options
from gemma_export.frontend.trace import bind_weights, trace
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import remove_dead
from gemma_export.targets import ExportOptions
from gemma_graphs.config import GemmaConfig
from gemma_graphs.gemma import cache_tensors
from gemma_runtime import interface


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
    session = ort_run.session(ort_run.model_proto(model), optimize=optimize)
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {k: v for k, v in feeds.items() if k in names})
    return dict(zip([o.name for o in session.get_outputs()], outputs))


def feeds(cfg, batch: int = 2, seq: int = 9, past: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = interface.concat_feeds(rng.integers(3, cfg.vocab_size, size=(batch, seq)),
                                 np.tile(np.arange(past, past + seq), (batch, 1)), np.ones((batch, past + seq)))
    for cache in cache_tensors(cfg):  # per-layer head dims and shared caches (Gemma 4) included
        shape = (batch, cache.kv_heads, past, cache.head_dim)
        out[cache.input_name] = rng.standard_normal(shape).astype(np.float32)
    return out


def inplace_feeds(concat: dict[str, np.ndarray], max_seq_len: int, seed: int = 1,
                  windows: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    """The call `concat` (from feeds()) through the in-place interface: each past cache at the front
    of a static [batch, kv_heads, max_seq_len, head_dim] buffer whose tail holds other finite values;
    layer i in `windows` (ring_windows()) as a ring of that many slots, position p in slot p mod window."""
    rng = np.random.default_rng(seed)
    ids = concat[interface.INPUT_IDS]
    batch, seq = ids.shape
    out = interface.inplace_feeds(ids, concat[interface.POSITION_IDS][:, 0], np.full(batch, seq), np.zeros((batch, 1)))
    del out[interface.LOGITS_INDEX]  # a graph before the logits_index pass has none
    for name, cache in concat.items():
        if name.startswith(interface.PAST_PREFIX):
            window = (windows or {}).get(int(name.split(".")[1]))
            static = rng.standard_normal((*cache.shape[:2], window or max_seq_len, cache.shape[3])).astype(np.float32)
            for position, slot in cache_slots(cache.shape[2], window):
                static[:, :, slot] = cache[:, :, position]
            out[name] = static
    return out


def ring_windows(model: ir.Model, max_seq_len: int) -> dict[int, int]:
    """layer -> ring size, for the layers whose key cache is shorter than max_seq_len (a ring)."""
    return {int(v.name.split(".")[1]): v.shape[2] for v in model.graph.inputs
            if v.name.startswith(interface.PAST_PREFIX + "key.") and isinstance(v.shape[2], int) and v.shape[2] < max_seq_len}


def cache_slots(held: int, window: int | None) -> list[tuple[int, int]]:
    """(position, slot) of what a cache keeps of positions 0 .. held - 1: every position at its own
    index, or, in a ring of `window` slots, the last `window` positions, p at slot p mod window."""
    if not window:
        return [(p, p) for p in range(held)]
    return [(p, p % window) for p in range(max(0, held - window), held)]


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]
