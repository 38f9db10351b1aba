"""The export targets, as data: each one's ordered pass list and the facts its passes and the
runtime act on, beside the export options a target accepts. Passes read these facts
(ctx.target), never a target's name; the CLI's help, the manifest and the README's targets table
derive from this table.

A target's list names every pass it may run; gemma_export/passes/pipeline.py builds, for given
options and config, the pipeline of the passes that will act (each pass module says when: `acts`)
and checks the order against what each pass declares (AFTER, REQUIRES, UNRUNNABLE_UNTIL). Low
precision comes last in every list, on whatever products, weights and kernels the fusions left
(--calibrate, --quant, --dtype).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from gemma_export.quantization.method import QuantMethod

DTYPES = ("fp32", "fp16", "bf16")
# int8 / int4: a recipe (passes/quant_recipe.py) that picks each weight's width by measured
# sensitivity under a size budget, starting from that width; -uniform: every weight at that width;
# source: a quantized GGUF's own blocks, float where their int8 activations hurt most within a budget;
# source-uniform: every unit its own blocks.
QUANTS = ("none", "int8", "int4", "int8-uniform", "int4-uniform", "source", "source-uniform")
# The recipes' default budgets, as a fraction of the fp32 folder (every weight and the copied tokenizer;
# --max-size overrides them), held by both the files and the bytes a decode step streams. Chosen on
# the real Gemma 3 270M: at 38% the int4 recipe affords the two-stage lm_head's int8 rows beside
# its scan (files ~38%, streamed ~22% of fp32: ~240 MB, below llama.cpp Q4_K_M's 253 MB file);
# int8 at 42% streams ~285 MB with float where int8 activations hurt most.
DEFAULT_BUDGET = {"int4": 0.38, "int8": 0.42}
# --quant source's default budget: the all-source size plus this fraction, spent on float for the
# units whose kernel input rounding (int8 activations) moves the output most.
SOURCE_HEADROOM = 0.15


@dataclasses.dataclass(frozen=True)
class Target:
    """One export target: the passes it may run, in order, and the facts they act on. Fields that
    change a graph default to off."""

    name: str
    graph: str  # for people: what the graph is made of
    kv_cache: str  # for people: the cache's form
    runs_on: str  # for people
    passes: tuple[str, ...]  # module names in gemma_export/passes/, in order
    dtypes: tuple[str, ...] = DTYPES  # precisions it exports, the default first
    quants: tuple[str, ...] = QUANTS
    quantized_matmul: str | None = None  # a quantized product: "MatMulNBits" (com.microsoft) or "DequantizeLinear"
    int4_zero_points: bool = True  # int4 blocks carry zero points
    int8_activations: bool = False  # the CPU kernel rounds a quantized product's input to int8 (calibrate for it)
    ring_caches: bool = False  # sliding-window layers keep a window-sized ring cache
    bf16_compute: bool = False  # bf16 computed in bf16; else bf16 storage with fp32 compute (CPU kernels)
    inlines_functions: bool = False  # the project's functions always inlined (else where --inline-functions asks)
    backends: tuple[str, ...] = ("ort",)  # runtime backends that run it, the default first
    devices: tuple[str, ...] = ("cpu",)  # onnxruntime devices, the default first
    # the pass list of an embedding model's graph (no cache, no logits); empty: not exported yet
    embedding_passes: tuple[str, ...] = ()

    def pass_modules(self) -> list[ModuleType]:
        """Every pass of the list, whether or not it acts at given options (passes/pipeline.py picks those)."""
        return [importlib.import_module(f"gemma_export.passes.{name}") for name in self.passes]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    target: str | None = None  # None: the default target (the first of TARGETS)
    dtype: str | None = None  # None: the target's default
    quant: str = "none"
    block_size: int = 32
    calibrate: bool = False
    keep_embeddings_fp: bool = False
    max_seq_len: int = 4096
    max_size_mib: float | None = None  # the int8 / int4 / source recipes' budget; None: the recipe's default
    text_only: bool = False  # a multimodal checkpoint: the decoder alone, taking token ids only (no encoders)
    inline_functions: bool = False  # the project's functions inlined (targets whose list has inline_functions)
    lm_head_candidates: int = 64  # the two-stage lm_head's re-scored candidates (two_stage_lm_head); 0: off


# The passes that store weights quantized (--quant; the two-stage lm_head's int4 scan), and with them
# those that lower the precision (--calibrate, --dtype); each acts only when the options ask for it.
QUANTIZERS = ("two_stage_lm_head", "quantize_matmuls", "quantize_embedding", "quantize_lookups")
LOW_PRECISION = ("activation_scaling", "quant_recipe", *QUANTIZERS, "precision")

# A GGUF's own blocks (--quant source) carry integer zero points and float offsets in MatMulNBits'
# form; the DequantizeLinear targets quantize anew (TensorRT imports int4 only without zero points).
DEQUANTIZED_QUANTS = tuple(q for q in QUANTS if not QuantMethod.parse(q).keeps_source_blocks)

_TARGETS = (
    # The default target comes first.
    Target(
        "ort-cpu",
        graph="onnxruntime contrib ops: GroupQueryAttention (rotary inside, softcap, local window), "
              "SkipSimplifiedLayerNormalization, packed QKV and gate/up MatMuls",
        kv_cache="in place: one max-length buffer per layer bound as past and present",
        runs_on="onnxruntime (CPU)",
        passes=("set_opset", "tied_lm_head", "fold_weight_transposes", "logits_index", "inplace_cache_io",
                "attention_gqa", "constant_view_shapes", "rms_norm", "skip_rms_norm", "geglu", "pack_matmuls",
                "drop_project_domain",
                "activation_scaling", "quant_recipe", "two_stage_lm_head", "quantize_matmuls", "quantize_embedding",
                "quantize_lookups", "precision",
                "split_lm_head"),
        # MatMulNBits at accuracy_level 4 on the CPU quantizes its input to int8 per block.
        quantized_matmul="MatMulNBits", int8_activations=True,
        embedding_passes=("set_opset", "fold_weight_transposes", "rms_norm", "skip_rms_norm", "rotary_embedding",
                          "geglu", "pack_matmuls", "drop_project_domain", "precision")),
    Target(
        "ort-cuda",
        graph="the ort-cpu graph without lm_head slices (CUDA does not prepack; slices would hold "
              "the table twice in GPU memory); fp16 or bf16 only",
        kv_cache="in place, as ort-cpu",
        runs_on="onnxruntime-gpu (CUDA; `device=\"cpu\"` runs it on the CPU provider)",
        passes=("set_opset", "tied_lm_head", "fold_weight_transposes", "logits_index", "inplace_cache_io",
                "attention_gqa", "constant_view_shapes", "rms_norm", "skip_rms_norm", "geglu", "pack_matmuls",
                "drop_project_domain",
                "activation_scaling", "quant_recipe", "quantize_matmuls", "quantize_embedding", "quantize_lookups",
                "precision"),
        # onnxruntime registers its CUDA GroupQueryAttention for fp16 and bf16 only.
        dtypes=("fp16", "bf16"),
        quantized_matmul="MatMulNBits", bf16_compute=True, devices=("cuda", "cpu")),
    Target(
        "onnx",
        graph="standard ops only, opset 24: RMSNormalization, RotaryEmbedding, Attention, TensorScatter",
        kv_cache="in place, static maximum length; sliding-window layers keep a window-sized ring",
        runs_on="onnxruntime (OpenVINO 2026.4 refuses TensorScatter-24 and Attention-24)",
        passes=("set_opset", "tied_lm_head", "fold_weight_transposes", "logits_index", "inplace_cache_io",
                "rms_normalization", "rotary_embedding", "geglu", "attention_onnx",
                "drop_project_domain",
                "activation_scaling", "quant_recipe", "quantize_matmuls", "quantize_embedding", "quantize_lookups",
                "precision",
                "split_lm_head"),
        # onnxruntime's CPU provider fuses DequantizeLinear + MatMul into MatMulNBits, which
        # quantizes activations (session.qdq_matmulnbits_accuracy_level, 4 by default).
        quantized_matmul="DequantizeLinear", int8_activations=True, ring_caches=True, quants=DEQUANTIZED_QUANTS,
        embedding_passes=("set_opset", "fold_weight_transposes", "rms_normalization", "rotary_embedding", "geglu",
                          "drop_project_domain", "precision")),
    Target(
        "tensorrt",
        graph="the `onnx` graph cut to what TensorRT parses (Gemma 2's soft-capped attention spelled out)",
        kv_cache="in place, static maximum length",
        runs_on="TensorRT, TensorRT-RTX (and onnxruntime)",
        passes=("set_opset", "tied_lm_head", "fold_weight_transposes", "logits_index", "inplace_cache_io",
                "rms_normalization", "rotary_embedding", "geglu", "attention_onnx",
                "drop_project_domain",
                "activation_scaling", "quant_recipe", "quantize_matmuls", "quantize_embedding", "quantize_lookups",
                "precision",
                "attention_tensorrt", "constant_axes"),
        # TensorRT imports int4 only as symmetric blocks, without zero points. No ring caches:
        # whether TensorRT builds the ring's circular TensorScatter is untested without a GPU.
        quantized_matmul="DequantizeLinear", int4_zero_points=False, bf16_compute=True, quants=DEQUANTIZED_QUANTS,
        backends=("ort", "trt")),
    Target(
        "generic",
        graph="the traced graph: project-domain nodes (GemmaRMSNorm, GemmaRoPE, GemmaGeGLU, "
              "GemmaAttention) with function bodies",
        kv_cache="concatenating past/present",
        runs_on="onnxruntime; with --inline-functions (standard ops only) also OpenVINO and onnx's reference "
                "evaluator (OpenVINO 2026.4 refuses the functions)",
        passes=("tied_lm_head", "fold_weight_transposes", "inline_functions"), dtypes=("fp32",), quants=("none",)),
    Target(
        "openvino",
        graph="the generic graph with its functions inlined: standard ops only (MatMul/Softmax attention with "
              "an explicit mask, RoPE from Cos/Sin/Slice/Concat, RMSNorm from ReduceMean/Sqrt; DequantizeLinear "
              "weights with --quant)",
        kv_cache="concatenating past/present",
        runs_on="OpenVINO (CPU), onnxruntime, onnx's reference evaluator",
        passes=("set_opset", "tied_lm_head", "fold_weight_transposes", "inline_functions",
                "activation_scaling", "quant_recipe", "quantize_matmuls", "quantize_embedding", "quantize_lookups"),
        # OpenVINO reads DequantizeLinear weights (int8, int4 blocks along K: opset 21+, which set_opset
        # gives) and computes with float activations; onnxruntime fuses them into MatMulNBits, which
        # rounds its input to int8 (backend ort).
        quantized_matmul="DequantizeLinear", quants=DEQUANTIZED_QUANTS, dtypes=("fp32",),
        inlines_functions=True, backends=("openvino", "ort")),
)

TARGETS: dict[str, Target] = {t.name: t for t in _TARGETS}
DEFAULT_TARGET = _TARGETS[0].name


def readme_table() -> str:
    """The README's targets table, made from this one."""
    lines = ["| target | graph | KV cache | runs on |", "|---|---|---|---|"]
    for t in _TARGETS:
        name = f"`{t.name}`" + (" (default)" if t.name == DEFAULT_TARGET else "")
        lines.append(f"| {name} | {t.graph} | {t.kv_cache} | {t.runs_on} |")
    return "\n".join(lines)
