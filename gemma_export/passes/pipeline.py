"""The ordered pass list of each target, and the runner that can dump the IR after each pass."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import onnx_ir as ir

from gemma_export.errors import GemmaExportError
from gemma_export.passes import (activation_scaling, attention_scatter, constant_view_shapes, drop_project_domain,
                                 fold_weight_transposes, geglu, group_query_attention, inplace_cache_io,
                                 logits_index, pack_matmuls, precision, quantize_embedding, quantize_matmuls,
                                 rms_norm, rms_normalization, rotary_embedding, set_opset, skip_rms_norm,
                                 split_lm_head, tensorrt_attention, tied_lm_head)
from gemma_export.passes.context import PassContext, TARGETS
from gemma_export.passes.ir_utils import remove_dead

# Low precision comes last, on whatever products, weights and kernels the fusions left
# (--calibrate, --quant, --dtype; each pass is a no-op at its default).
LOW_PRECISION = [activation_scaling, quantize_matmuls, quantize_embedding, precision]

_ORT = [
    tied_lm_head, fold_weight_transposes, logits_index, inplace_cache_io,
    group_query_attention, constant_view_shapes, rms_norm, skip_rms_norm, geglu, pack_matmuls,
    drop_project_domain,
    *LOW_PRECISION,
]

_STANDARD = [
    set_opset, tied_lm_head, fold_weight_transposes, logits_index, inplace_cache_io,
    rms_normalization, rotary_embedding, geglu, attention_scatter,
    drop_project_domain,
    *LOW_PRECISION,
]

PIPELINES: dict[str, list[ModuleType]] = {
    "generic": [tied_lm_head, fold_weight_transposes],
    "onnx": [*_STANDARD, split_lm_head],
    "ort-cpu": [*_ORT, split_lm_head],
    # The ort-cpu graph: GroupQueryAttention rotates q/k inside on both providers, so the
    # CUDA-only GemmaRotaryEmbedding has no place; its in-kernel q/k norm (CUDA only) would fold
    # Gemma 3's QK-norm but is left out until it can be checked on a GPU. No split_lm_head: CUDA
    # does not prepack, and separate slices would hold the table twice in GPU memory.
    "ort-cuda": _ORT,
    # The standard graph, its Attention nodes cut to what TensorRT's Attention has (no softcap,
    # no softmax_precision): after precision, which may set the latter.
    "tensorrt": [*_STANDARD, tensorrt_attention],
}


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
