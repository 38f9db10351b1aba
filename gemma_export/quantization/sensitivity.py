"""How much the model's output moves when one weight alone is quantized: the measurement the
quantization recipe (recipe.py) chooses widths by.

The model runs in float64 (float64_reference.py: its torch definition, so that the
choice does not depend on the instruction set of the host that exports) over calibration text,
once as it is and once per weight with that weight as the export will store it, the kernel's own
rounding of its input emulated too where the target has one (MatMulNBits at accuracy level 4
rounds activations to int8 per block). The measure is KL(reference || quantized) per position,
at every POSITION_STRIDE-th position, from the float64 logits. A weight in layer i runs the model
again from layer i only (the residual stream entering it is kept from the reference run).

The narrowest width is measured for every weight; a wider width's KL is scaled from it by the
ratio of the product's output errors on the calibration activations (a quadratic model of KL in
the output perturbation), which costs numpy time instead of a model run. Float costs nothing.
A quantized GGUF's own blocks (width "source") are the model's weights already: measuring them
swaps no weight and measures the kernel's input rounding alone. A lookup table (no product reads
it) scales by the ratio of its weights' own squared errors instead.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from gemma_export import calibrate
from gemma_export.passes.context import PassContext
from gemma_export.quantization import blocks
from gemma_export.quantization.float64_reference import DTYPE, Float64Reference
from gemma_export.quantization.method import SOURCE
from gemma_export.quantization.units import Unit
from gemma_export.tensors import sampled_rows

TOKENS = 320  # calibration tokens per measurement
GATHER_BUDGET = 2 * 2 ** 30  # bytes of gathered expert weights (float64) one run may hold
MIN_PIECE = 8
POSITION_STRIDE = 2  # KL at every other position (the lm_head is most of the 270M's work)
ERROR_ROWS = 2048  # output channels sampled for the output-error ratio

SchemeOf = Callable[[Unit, str], "blocks.Scheme | None"]
KEEPS_WEIGHTS = SOURCE  # the width whose stored values are the graph's own


def measure(ctx: PassContext, units: list[Unit], widths: tuple[str, ...],
            scheme_of: SchemeOf) -> tuple[dict[str, dict[str, float]], int]:
    """{weight name: {width: KL(fp32 || that weight at that width) per position}}, and the number of
    calibration tokens run."""
    sequences = _sequences(ctx)
    reference = Float64Reference(ctx, units)
    runs = [reference.prefill(ids) for ids in sequences]
    positions = slice(None, None, POSITION_STRIDE)
    references = [reference.log_probs(run, 0, positions) for run in runs]
    count = sum(len(r) for r in references)
    activations = reference.inputs(units, runs)
    narrowest = widths[0]
    result = {}
    for unit in units:
        scheme = scheme_of(unit, narrowest)
        rows = unit.rows()
        stored = None if narrowest == KEEPS_WEIGHTS else \
            (lambda a, b, rows=rows, scheme=scheme: blocks.quantize_dequantize(rows.rows(a, b), scheme))
        rounding = (lambda x, block=scheme.block: blocks.int8_blocks(x, block)) \
            if ctx.target.int8_activations and unit.products else None
        start = reference.first_layer(unit)
        total = 0.0
        with reference.quantized(unit, stored, rounding):
            for run, ref in zip(runs, references):
                total += _kl_sum(ref, reference.log_probs(run, start, positions))
        kl = max(0.0, total / count)
        w, x = sampled_rows(rows, ERROR_ROWS), activations.get(unit.name)
        errors = {width: _output_error(w, x, scheme_of(unit, width), ctx.target.int8_activations,
                                       width == KEEPS_WEIGHTS) for width in widths}
        result[unit.name] = {width: 0.0 if errors[narrowest] == 0 else kl * errors[width] / errors[narrowest]
                             for width in widths}
    return result, sum(map(len, sequences))


def _kl_sum(ref: torch.Tensor, ours: torch.Tensor) -> float:
    """sum over positions of KL(ref || ours), from log-probabilities."""
    return float((ref.exp() * (ref - ours)).sum())


def _sequences(ctx: PassContext) -> list[list[int]]:
    """Calibration sequences, cut to TOKENS tokens in all, in pieces of at most _piece_length()
    tokens, each after the first led by BOS again (a piece is measured without what came before)."""
    out, left = [], TOKENS
    piece = _piece_length(ctx)
    bos = ctx.config.bos_token_id
    for ids in calibrate.sequences(ctx):
        if left <= 1:
            break
        ids = ids[:left]
        left -= len(ids)
        out.extend(_split(ids, piece, bos))
    return out


def _split(ids: list[int], piece: int, bos: int) -> list[list[int]]:
    """ids in pieces of at most `piece` tokens, each after the first led by BOS."""
    return [ids[:piece]] + [[bos, *ids[i: i + piece - 1]] for i in range(piece, len(ids), piece - 1)]


def _piece_length(ctx: PassContext) -> int:
    """The routed experts gather each token's top-k experts' weights: a prefill of n tokens holds
    n x top_k experts in float64 (26B-A4B: ~364 MiB a token). Their pieces stay within GATHER_BUDGET
    (but are never shorter than MIN_PIECE)."""
    cfg = ctx.config
    if not cfg.num_experts:
        return TOKENS
    per_token = cfg.top_k_experts * 3 * cfg.hidden_size * cfg.moe_intermediate_size * DTYPE.itemsize  # gate, up, down
    return max(MIN_PIECE, min(TOKENS, GATHER_BUDGET // per_token))


def _output_error(w: np.ndarray, x: np.ndarray | None, scheme: blocks.Scheme | None, int8_inputs: bool,
                  keeps_weights: bool) -> float:
    """||Qa(x) Q(W)^T - x W^T||^2 over the sampled output channels w, in float64 (0 for float;
    Q(W) = W when the weights are kept); ||Q(W) - W||^2 for a lookup table (x None)."""
    if scheme is None:
        return 0.0
    wq = w if keeps_weights else blocks.quantize_dequantize(w, scheme)
    if x is None:
        return float(np.square(wq.astype(np.float64) - w).sum())
    return blocks.product_error(x, wq, x @ w.T.astype(np.float64), scheme.block if int8_inputs else None)
