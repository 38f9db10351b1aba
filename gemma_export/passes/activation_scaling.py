"""Calibrated quantization (`--calibrate`, int8 or int4): activation-aware scaling ahead of the
round-to-nearest quantizer. For each product y = x W^T that will be quantized (the MatMuls, and the
tied lm_head unless --keep-embeddings-fp), the input channels of W are multiplied by s and x is
divided by s, which leaves y unchanged in exact arithmetic but moves quantization error between
weights and activations. s is searched per product among two families on an alpha grid, AWQ's
rms(x)^alpha (Lin et al. 2023) and SmoothQuant's max|x|^alpha / max|w|^(1 - alpha) (Xiao et al.
2023), by the output error ||Qa(X / s) Q(W s)^T - X W^T|| over the calibration activations
(the model in float64 on the built-in text: gemma_export/float64_reference.py). Qa is the
kernel's own rounding of its input: onnxruntime's CPU MatMulNBits at accuracy level 4 (ort-cpu, and onnx as
onnxruntime runs it) quantizes x to int8 in blocks (quant.int8_blocks); elsewhere x stays as it is.

The export does not depend on the host that makes it. The activations come from the model in
float64 (they came from the fp32 graph in onnxruntime, whose kernels differ between instruction
sets: the same checkpoint gave activations that differed in their last bits between AVX2 and
AVX-512 hosts, and scales computed from them differed in every byte, though no choice of alpha
did). Every scale is then rounded to a grid of STEPS_PER_OCTAVE steps an octave, 2^(k / 8), a
power of two times one of eight float32 constants: a scale could change only where its log2 lies
within the float64 kernels' ~1e-14 of a grid boundary. The statistics and the search run in numpy
in a fixed order, the errors in float64; a candidate replaces the best only with a strictly smaller
error (ties to the earlier one). On the 270M the grid costs nothing (int4-uniform against fp32:
top-1 77.4%, KL 0.184, perplexity 20.86; with fp32 scales from onnxruntime's activations 73.5%,
0.184, 21.00); powers of two alone (one step an octave) lost most of the gain (72.9%, 0.252, 23.24).

x / s is folded into the norm that produces x when that norm feeds only this product (q/k/v,
gate/up, lm_head); elsewhere (o_proj, down_proj) a Mul by 1 / s goes in front of the product. The
embedding table, scaled for the lm_head, is read by the token lookup too: a Mul by 1 / s follows it.

On the real Gemma 3 270M (ort-cpu, blocks of 32, against its fp32 export over
gemma_export.texts.PROMPTS; calibration text gemma_export.texts.CALIBRATION, disjoint from it):
int4-uniform top-1 agreement 67.3% -> 77.4% and perplexity 23.68 -> 20.86 (2026-12-07, with the
grid); int8 96.5% -> 97.6% and KL 0.0034 -> 0.0019 (an earlier run, fp32 scales;
benchmarks/precision.py). GPTQ-style error compensation was tried on the same 678
calibration tokens and lost in perplexity (24.6 against round-to-nearest's 23.7, in a numpy
simulation): too few tokens for its K x K Hessians, where this fits one number per product.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gemma_export import calibrate, quant
from gemma_export.float64_reference import Float64Reference
from gemma_export.tensors import StreamedTensor, mapped, sampled_rows, transposed, untransposed
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_initializer, add_node, initializer_of
from gemma_export.passes.quant_recipe import scheme_for, units
from gemma_export.passes.tied_lm_head import EMBEDDING
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "activation_scaling"
ALPHAS = np.linspace(0.0, 1.0, 11)
STEPS_PER_OCTAVE = 8
# 2^(j / 8) as float32, j = 0..7 (each far from a float32 rounding boundary: every host rounds them alike)
MANTISSAS = np.array([2 ** (j / STEPS_PER_OCTAVE) for j in range(STEPS_PER_OCTAVE)], np.float32)
SEARCH_ROWS = 2048  # output channels sampled for the search (its error estimate and max|w|)
NORMS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization")


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return options.calibrate


def run(model: ir.Model, ctx: PassContext) -> int:
    if not ctx.options.calibrate:
        return 0
    graph = model.graph
    measured = [u for u in units(graph, ctx) if u.products]
    reference = Float64Reference(ctx, measured)
    activations = reference.inputs(measured, [reference.prefill(ids) for ids in calibrate.sequences(ctx)])
    del reference
    alphas = {}
    for unit in measured:
        # searched for --quant's own width: the recipe, which runs next, measures the scaled graph
        scheme = scheme_for(ctx, f"int{ctx.options.quant_bits}", unit.shape[1])
        alpha, s = _search(unit.rows(), activations[unit.name], scheme, ctx.target.int8_activations)
        _scale_weight(unit.weight, s)
        for node in unit.products:
            _divide_input(graph, node, node.inputs[0], unit.weight, s)
        ctx.input_scales[unit.name] = s
        alphas[unit.name] = alpha
    ctx.report["calibration"] = {"method": "activation-aware scaling (AWQ / SmoothQuant families), on a grid of 2^(k/8)",
                                 "tokens": int(next(iter(activations.values())).shape[0]) if activations else 0,
                                 "alpha": alphas}
    return sum(len(u.products) for u in measured)


def _search(rows: StreamedTensor, x: np.ndarray, scheme: quant.Scheme,
            int8_inputs: bool) -> tuple[str, np.ndarray]:
    """The scales s with the smallest output error over the calibration activations, the kernel's
    int8 rounding of x / s included when it has one. Two families, alpha on a grid: AWQ's
    rms(x)^alpha and SmoothQuant's max|x|^alpha / max|w|^(1 - alpha) (per input channel), each
    rounded to the grid (grid_scales). Candidates that round to the same scales are one, the first
    listed; errors in float64; ties to the earlier candidate."""
    w = sampled_rows(rows, SEARCH_ROWS)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64.T
    log_rms = 0.5 * np.log2(np.mean(x64 ** 2, axis=0) + 1e-16)
    log_x_max = np.log2(np.abs(x64).max(0) + 1e-8)
    log_w_max = np.log2(np.abs(w64).max(0) + 1e-8)
    candidates = [(f"rms^{a:.1f}", a * log_rms) for a in ALPHAS]
    candidates += [(f"max^{a:.1f}", a * log_x_max - (1 - a) * log_w_max) for a in ALPHAS[1:]]
    best = (np.inf, "none", np.ones(x.shape[1], np.float32))
    tried = set()
    for name, log_s in candidates:
        s = grid_scales(log_s)
        if s.tobytes() in tried:
            continue
        tried.add(s.tobytes())
        q = quant.dequantize(quant.quantize(w * s, scheme), scheme)
        xs = quant.int8_blocks(x / s, scheme.block) if int8_inputs else x / s
        err = float(np.square(xs.astype(np.float64) @ q.astype(np.float64).T - ref).sum())
        if err < best[0]:
            best = (err, name, s)
    return best[1], best[2]


def grid_scales(log_s: np.ndarray) -> np.ndarray:
    """2^(k / STEPS_PER_OCTAVE) nearest to s / c, float32, with c the geometric centre of the
    scales' range (so that they straddle 1): a power of two times one of MANTISSAS."""
    k = np.rint((log_s - (log_s.max() + log_s.min()) / 2) * STEPS_PER_OCTAVE).astype(np.int64)
    return np.ldexp(MANTISSAS[k % STEPS_PER_OCTAVE], (k // STEPS_PER_OCTAVE).astype(np.int32))


def _scale_weight(weight: ir.Value, s: np.ndarray) -> None:
    """Input channel k times s[k]: columns of the [out, in] rows, kept as streamed rows."""
    if weight.name == EMBEDDING:
        weight.const_value = mapped(weight.const_value, lambda r: (r * s).astype(np.float32), EMBEDDING)
        return
    rows = untransposed(weight.const_value, weight.name + ".rows")
    scaled = mapped(rows, lambda r: (r * s).astype(np.float32), weight.name + ".scaled_rows")
    weight.const_value = transposed(scaled, weight.name)


def _divide_input(graph: ir.Graph, node: ir.Node, x: ir.Value, weight: ir.Value, s: np.ndarray) -> None:
    norm = x.producer()
    gamma = initializer_of(norm.inputs[-1]) if norm is not None and norm.op_type in NORMS \
        and x is norm.outputs[0] else None
    if gamma is not None and len(gamma.uses()) == 1 and len(x.uses()) == 1:
        gamma.const_value = mapped(gamma.const_value, lambda g: (g / s).astype(np.float32), gamma.name)
    else:
        inverse = add_initializer(graph, f"{weight.name}.input_scale", (1.0 / s).astype(np.float32))
        divided = add_node(graph, node, "Mul", [x, inverse]).outputs[0]
        node.replace_input_with(0, divided)
    if weight.name == EMBEDDING:  # the scaled table is also looked up: undo s on the rows it gives
        for gather in [n for n, _ in weight.uses() if n.op_type == "Gather"]:
            looked_up = gather.outputs[0]
            uses = list(looked_up.uses())
            inverse = add_initializer(graph, f"{EMBEDDING}.lookup_scale", (1.0 / s).astype(np.float32))
            undone = add_node(graph, uses[0][0], "Mul", [looked_up, inverse]).outputs[0]
            for user, i in uses:
                user.replace_input_with(i, undone)
