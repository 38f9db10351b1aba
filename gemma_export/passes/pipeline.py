"""The ordered pass list of each target, and the runner that can dump the IR after each pass."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import onnx_ir as ir

from gemma_export.passes import fold_weight_transposes, tied_lm_head
from gemma_export.passes import (attention_scatter, drop_project_domain, geglu, inplace_cache_io, logits_index,
                                  rms_normalization, rotary_embedding, set_opset)
from gemma_export.passes import constant_view_shapes, group_query_attention, pack_matmuls, rms_norm, skip_rms_norm
from gemma_export.passes import tensorrt_attention
from gemma_export.passes import activation_scaling, precision, quantize_embedding, quantize_matmuls
from gemma_export.passes.context import PassContext, TARGETS
from gemma_export.passes.ir_utils import remove_dead
from gemma_export.errors import GemmaExportError

PIPELINES: dict[str, list[ModuleType]] = {
    "generic": [
        tied_lm_head,
        fold_weight_transposes,
    ],
    "onnx": [
        set_opset,
        tied_lm_head,
        fold_weight_transposes,
        logits_index,
        inplace_cache_io,
        rms_normalization,
        rotary_embedding,
        geglu,
        attention_scatter,
        drop_project_domain,
    ],
    "ort-cpu": [
        tied_lm_head,
        fold_weight_transposes,
        logits_index,
        inplace_cache_io,
        group_query_attention,
        constant_view_shapes,
        rms_norm,
        skip_rms_norm,
        geglu,
        pack_matmuls,
        drop_project_domain,
    ],
}
# ort-cuda runs the same graph. GroupQueryAttention rotates q/k inside on both providers, so the
# CUDA-only GemmaRotaryEmbedding (no CPU kernel) has no place; GroupQueryAttention's in-kernel
# q/k norm (q_norm_weight, honoured only on CUDA) would fold Gemma 3's QK-norm but is left out
# until it can be checked on a GPU.
PIPELINES["ort-cuda"] = PIPELINES["ort-cpu"]
# tensorrt: the onnx target's graph, which TensorRT's ONNX parser takes op by op once the Attention
# nodes are cut to what TensorRT's Attention has (tensorrt_attention, after precision).
PIPELINES["tensorrt"] = list(PIPELINES["onnx"])
# Low precision last, on whatever products, weights and kernels the fusions left (--calibrate,
# --quant, --dtype; each is a no-op at its default). ort-cuda shares ort-cpu's list.
LOW_PRECISION = [activation_scaling, quantize_matmuls, quantize_embedding, precision]
for _target in ("onnx", "ort-cpu", "tensorrt"):
    PIPELINES[_target].extend(LOW_PRECISION)
PIPELINES["tensorrt"].append(tensorrt_attention)


def targets_available() -> list[str]:
    return [t for t in TARGETS if t in PIPELINES]


def run_pipeline(model: ir.Model, ctx: PassContext, dump_dir: Path | None = None,
                 on_pass: Callable[[str, int], None] | None = None) -> list[dict]:
    """Runs the target's passes in order; returns [{"name", "rewrites"}] for the manifest."""
    target = ctx.options.target
    if target not in PIPELINES:
        raise GemmaExportError(f"target {target!r} is not available (available: {', '.join(targets_available())})")
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        _dump(model, dump_dir / "00-traced.txt")
    done = []
    for i, p in enumerate(PIPELINES[target], start=1):
        rewrites = p.run(model, ctx)
        remove_dead(model)
        done.append({"name": p.NAME, "rewrites": rewrites})
        if on_pass:
            on_pass(p.NAME, rewrites)
        if dump_dir is not None:
            _dump(model, dump_dir / f"{i:02d}-{p.NAME}.txt")
    return done


def _dump(model: ir.Model, path: Path) -> None:
    path.write_text(str(model))
