"""The export targets, as data: each one's ordered pass list and the facts its passes and the
runtime act on. Passes read these facts (ctx.target), never a target's name; the CLI's help, the
manifest and the README's targets table derive from this table.

Low precision comes last in every pipeline, on whatever products, weights and kernels the
fusions left (--calibrate, --quant, --dtype; each pass is a no-op at its default).

Each target's passes also come in runnable groups (Target.groups): the graph runs in onnxruntime
after every pass, except from a pass of UNRUNNABLE_UNTIL until one of the passes it names has run;
`gemma-export validate --bisect` checks the graph after each group.
"""

from __future__ import annotations

import dataclasses

from gemma_export.passes.context import QUANTS, Target

# Passes by module name in gemma_export/passes/ (imported when a pipeline runs, so that reading
# this table, as the CLI does for its help, costs nothing).
# the passes that store weights quantized (--quant); precision lowers the float dtype (--dtype)
QUANTIZERS = ("quantize_matmuls", "quantize_embedding", "quantize_lookups")
LOW_PRECISION = ("activation_scaling", "quant_recipe", *QUANTIZERS, "precision")

ORT_FUSED = (
    "tied_lm_head", "fold_weight_transposes", "logits_index", "inplace_cache_io",
    "attention_gqa", "constant_view_shapes", "rms_norm", "skip_rms_norm", "geglu", "pack_matmuls",
    "drop_project_domain",
    *LOW_PRECISION,
)

STANDARD_OPS = (
    "set_opset", "tied_lm_head", "fold_weight_transposes", "logits_index", "inplace_cache_io",
    "rms_normalization", "rotary_embedding", "geglu", "attention_onnx",
    "drop_project_domain",
    *LOW_PRECISION,
)

# A GGUF's own blocks (--quant source) carry integer zero points and float offsets in MatMulNBits'
# form; the DequantizeLinear targets quantize anew (TensorRT imports int4 only without zero points).
DEQUANTIZED_QUANTS = tuple(q for q in QUANTS if not q.startswith("source"))

_TARGETS = (
    # The default target comes first.
    Target(
        "ort-cpu",
        graph="onnxruntime contrib ops: GroupQueryAttention (rotary inside, softcap, local window), "
              "SkipSimplifiedLayerNormalization, packed QKV and gate/up MatMuls",
        kv_cache="in place: one max-length buffer per layer bound as past and present",
        runs_on="onnxruntime (CPU)",
        passes=(*ORT_FUSED, "split_lm_head"),
        # MatMulNBits at accuracy_level 4 on the CPU quantizes its input to int8 per block.
        quantized_matmul="MatMulNBits", int8_activations=True),
    Target(
        "ort-cuda",
        graph="the ort-cpu graph without lm_head slices (CUDA does not prepack; slices would hold "
              "the table twice in GPU memory); fp16 or bf16 only",
        kv_cache="in place, as ort-cpu",
        runs_on="onnxruntime-gpu (CUDA; `device=\"cpu\"` runs it on the CPU provider)",
        # onnxruntime registers its CUDA GroupQueryAttention for fp16 and bf16 only.
        passes=ORT_FUSED, dtypes=("fp16", "bf16"),
        quantized_matmul="MatMulNBits", bf16_compute=True, devices=("cuda", "cpu")),
    Target(
        "onnx",
        graph="standard ops only, opset 24: RMSNormalization, RotaryEmbedding, Attention, TensorScatter",
        kv_cache="in place, static maximum length; sliding-window layers keep a window-sized ring",
        runs_on="onnxruntime, other ONNX runtimes",
        passes=(*STANDARD_OPS, "split_lm_head"),
        # onnxruntime's CPU provider fuses DequantizeLinear + MatMul into MatMulNBits, which
        # quantizes activations (session.qdq_matmulnbits_accuracy_level, 4 by default).
        quantized_matmul="DequantizeLinear", int8_activations=True, ring_caches=True, quants=DEQUANTIZED_QUANTS),
    Target(
        "tensorrt",
        graph="the `onnx` graph cut to what TensorRT parses (Gemma 2's soft-capped attention spelled out)",
        kv_cache="in place, static maximum length",
        runs_on="TensorRT, TensorRT-RTX (and onnxruntime)",
        # attention_tensorrt after precision, which may set what TensorRT's Attention refuses.
        passes=(*STANDARD_OPS, "attention_tensorrt", "constant_axes"),
        # TensorRT imports int4 only as symmetric blocks, without zero points. No ring caches:
        # whether TensorRT builds the ring's circular TensorScatter is untested without a GPU.
        quantized_matmul="DequantizeLinear", int4_zero_points=False, bf16_compute=True, quants=DEQUANTIZED_QUANTS,
        backends=("ort", "trt")),
    Target(
        "generic",
        graph="the traced graph: project-domain nodes (GemmaRMSNorm, GemmaRoPE, GemmaGeGLU, "
              "GemmaAttention) with function bodies",
        kv_cache="concatenating past/present",
        runs_on="any ONNX runtime, unmodified",
        passes=("tied_lm_head", "fold_weight_transposes"), dtypes=("fp32",), quants=("none",)),
)

# inplace_cache_io takes the attention mask away and makes the caches static in-place buffers; the
# graph means something again once the attention lowering has given them their in-place meaning.
UNRUNNABLE_UNTIL = {"inplace_cache_io": ("attention_gqa", "attention_onnx")}


def runnable_groups(passes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The passes cut after each pass the graph runs after."""
    groups, current, waiting_for = [], [], ()
    for name in passes:
        current.append(name)
        if name in UNRUNNABLE_UNTIL:
            waiting_for = UNRUNNABLE_UNTIL[name]
        elif not waiting_for or name in waiting_for:
            groups.append(tuple(current))
            current, waiting_for = [], ()
    if current:
        raise ValueError(f"the graph never runs again after {current[0]} (it waits for {' or '.join(waiting_for)})")
    return tuple(groups)


_TARGETS = tuple(dataclasses.replace(t, groups=runnable_groups(t.passes)) for t in _TARGETS)
TARGETS: dict[str, Target] = {t.name: t for t in _TARGETS}
DEFAULT_TARGET = _TARGETS[0].name


def readme_table() -> str:
    """The README's targets table, made from this one."""
    lines = ["| target | graph | KV cache | runs on |", "|---|---|---|---|"]
    for t in _TARGETS:
        name = f"`{t.name}`" + (" (default)" if t.name == DEFAULT_TARGET else "")
        lines.append(f"| {name} | {t.graph} | {t.kv_cache} | {t.runs_on} |")
    return "\n".join(lines)
