"""Run a pass on a tiny traced model and onnxruntime before and after it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from gemma_export.checkpoints import open_source
from gemma_export.emit.weights import bind_weights
from gemma_export.frontend.trace import trace
from gemma_export.passes.context import ExportOptions, PassContext
from gemma_export.passes.ir_utils import remove_dead


def traced(folder, options: ExportOptions | None = None) -> tuple[ir.Model, PassContext]:
    source = open_source(folder)
    model = trace(source.config)
    bind_weights(model, source.weights)
    return model, PassContext(source.config, options or ExportOptions())


def apply(model: ir.Model, ctx: PassContext, *passes) -> tuple[ir.Model, list[int]]:
    """A copy of model with the passes applied in order, and each one's rewrite count."""
    model = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    counts = []
    for p in passes:
        counts.append(p.run(model, ctx))
        remove_dead(model)
    return model, counts


def run(model: ir.Model, feeds: dict) -> dict[str, np.ndarray]:
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
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


def op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]
