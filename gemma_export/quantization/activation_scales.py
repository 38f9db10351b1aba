"""The measurement of calibrated quantization (`--calibrate`, int8 or int4; the pass that applies
it is passes/activation_scaling.py): activation-aware scaling ahead of the round-to-nearest
quantizer. For each product y = x W^T that will be quantized (the MatMuls, and the
tied lm_head unless --keep-embeddings-fp), the input channels of W are multiplied by s and x is
divided by s, which leaves y unchanged in exact arithmetic but moves quantization error between
weights and activations. s is searched per product among two families on an alpha grid, AWQ's
rms(x)^alpha (Lin et al. 2023) and SmoothQuant's max|x|^alpha / max|w|^(1 - alpha) (Xiao et al.
2023), by the output error ||Qa(X / s) Q(W s)^T - X W^T|| over the calibration activations
(the model in float64 on the built-in text: float64_reference.py). Qa is the
kernel's own rounding of its input: onnxruntime's CPU MatMulNBits at accuracy level 4 (ort-cpu, and onnx as
onnxruntime runs it) quantizes x to int8 in blocks (blocks.int8_blocks); elsewhere x stays as it is.

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

from gemma_export import calibrate
from gemma_export.passes.context import PassContext
from gemma_export.quantization import blocks
from gemma_export.quantization.float64_reference import Float64Reference
from gemma_export.quantization.units import Unit, method_of, scheme_for
from gemma_export.tensors import StreamedTensor, sampled_rows

ALPHAS = np.linspace(0.0, 1.0, 11)
STEPS_PER_OCTAVE = 8
# 2^(j / 8) as float32, j = 0..7 (each far from a float32 rounding boundary: every host rounds them alike)
MANTISSAS = np.array([2 ** (j / STEPS_PER_OCTAVE) for j in range(STEPS_PER_OCTAVE)], np.float32)
SEARCH_ROWS = 2048  # output channels sampled for the search (its error estimate and max|w|)


def scales(ctx: PassContext, products: list[Unit]) -> tuple[dict[str, tuple[str, np.ndarray]], int]:
    """{unit name: (the chosen candidate, its scales s)} for these product units, searched at
    --quant's own width (the recipe, which runs after, measures the scaled graph), and the number
    of calibration tokens their activations came from."""
    reference = Float64Reference(ctx, products)
    activations = reference.inputs(products, [reference.prefill(ids) for ids in calibrate.sequences(ctx)])
    del reference
    width = method_of(ctx).width
    chosen = {u.name: search(u.rows(), activations[u.name], scheme_for(ctx, width, u.shape[1]),
                             ctx.target.int8_activations) for u in products}
    tokens = int(next(iter(activations.values())).shape[0]) if activations else 0
    return chosen, tokens


def search(rows: StreamedTensor, x: np.ndarray, scheme: blocks.Scheme,
           int8_inputs: bool) -> tuple[str, np.ndarray]:
    """The scales s with the smallest output error over the calibration activations, the kernel's
    int8 rounding of x / s included when it has one. Two families, alpha on a grid: AWQ's
    rms(x)^alpha and SmoothQuant's max|x|^alpha / max|w|^(1 - alpha) (per input channel), each
    rounded to the grid (grid_scales). Candidates that round to the same scales are one, the first
    listed; errors in float64; ties to the earlier candidate."""
    w = sampled_rows(rows, SEARCH_ROWS)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64.T  # the exact product
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
        err = blocks.product_error(x / s, blocks.quantize_dequantize(w * s, scheme), ref,
                                   scheme.block if int8_inputs else None)
        if err < best[0]:
            best = (err, name, s)
    return best[1], best[2]


def grid_scales(log_s: np.ndarray) -> np.ndarray:
    """2^(k / STEPS_PER_OCTAVE) nearest to s / c, float32, with c the geometric centre of the
    scales' range (so that they straddle 1): a power of two times one of MANTISSAS."""
    k = np.rint((log_s - (log_s.max() + log_s.min()) / 2) * STEPS_PER_OCTAVE).astype(np.int64)
    return np.ldexp(MANTISSAS[k % STEPS_PER_OCTAVE], (k // STEPS_PER_OCTAVE).astype(np.int32))

