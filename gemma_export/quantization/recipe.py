"""The quantization recipe: which width each unit (units.py) gets, "int4", "int8", "float" or
(`--quant source`) "source", for the quantizers (passes/quantize_matmuls.py, quantize_embedding.py,
quantize_lookups.py) and the manifest's report. A plan given in (PassContext.quant_plan already
set, e.g. from an artifact's manifest: validate --bisect) is replayed as it is, nothing measured.

`--quant int4` / `int8` start every unit at that width and upgrade the units whose quantization
hurts most, by measurement (sensitivity.py: the KL divergence of the model's output
from fp32 on calibration text when that unit alone is quantized), within a budget: `--max-size`
MiB, or by default a fraction (DEFAULT_BUDGET) of the fp32 folder (its weights and the tokenizer the
export copies; ctx.copied_bytes). Bytes are counted two ways (units.unit_bytes) and the budget
holds both: the files, exactly as the quantizers write them, and what a decode step streams
(MatMulNBits' prepacked blocks: an fp32 scale and block sum per block; the two-stage lm_head's
scan instead of the head). The upgrades are taken greedily by KL saved per byte added (the larger
of the two counts), from each width of the largest unit in turn; sensitivities are rounded to
SIGNIFICANT_DIGITS and ties broken by name, so the same source and options give the same choices
whatever the thread count. `--quant int4-uniform` / `int8-uniform`: every unit at that width.

`--quant source` starts every unit a quantized GGUF stores as blocks at "source" (those blocks,
kept exactly) and upgrades to "float" the units whose kernel input rounding (MatMulNBits' int8
activations, the only rounding left) moves the output most, within the blocks' size plus
SOURCE_HEADROOM over the all-source size of the export (or `--max-size`); `source-uniform` keeps
every unit's blocks. On a target whose kernels keep fp32 activations (ort-cuda) nothing is left
to measure: `source` is `source-uniform` there.

Why a mix: on the real Gemma 3 270M, int4 everywhere changes about a quarter of the top-1 tokens,
most of it from a few units (the embedding / lm_head, which is also ~63% of the weights, and a
few layers' products); llama.cpp's Q4_K_M is such a mix too (Q8_0 embedding, Q5_0/Q6_K layers).
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.errors import GemmaExportError
from gemma_export.passes.context import PassContext
from gemma_export.quantization import blocks, sensitivity
from gemma_export.quantization.blocks import Bytes
from gemma_export.quantization.method import SOURCE, WIDTHS
from gemma_export.quantization.units import Unit, method_of, scheme_for_unit, unit_bytes, units
from gemma_export.targets import DEFAULT_BUDGET, SOURCE_HEADROOM

SIGNIFICANT_DIGITS = 3
MIB = 2 ** 20


def plan(model: ir.Model, ctx: PassContext) -> int:
    """Sets ctx.quant_plan (replays it when given in) and the report's entry; the number of units."""
    method = method_of(ctx)
    if not method.quantizes:
        return 0
    found = units(model.graph, ctx)
    if ctx.quant_plan:
        _replay(found, ctx)
        return len(found)
    extra = {}
    if method.keeps_source_blocks:
        start, extra = _source_widths(found, ctx.options.quant)
    else:
        start = {u.name: method.width for u in found}
    widths = method.widths
    candidates = [u for u in found if start[u.name] == widths[0]]
    if method.keeps_source_blocks:  # only a product's input rounding moves a kept block's output
        candidates = [u for u in candidates if u.products] if ctx.target.int8_activations else []
    if method.uniform or not candidates:
        ctx.quant_plan = start
        ctx.report["quantization"] = {"recipe": ctx.options.quant, **extra, "choices": dict(start)}
    else:
        ctx.quant_plan = _measured_plan(model, ctx, found, start, candidates, widths, extra)
    return len(found)


def _replay(found: list[Unit], ctx: PassContext) -> None:
    """A given plan must name exactly this graph's units, each at a width the quantizers know."""
    given = ctx.quant_plan
    names = {u.name for u in found}
    if set(given) != names:
        odd = sorted(set(given) ^ names)
        raise GemmaExportError(f"the given quantization plan does not match this graph's weights ({len(odd)} differ, "
                               f"e.g. {', '.join(odd[:3])}): export it again with this version")
    unknown = sorted({w for w in given.values() if w not in (*WIDTHS, SOURCE)})
    if unknown:
        raise GemmaExportError(f"the given quantization plan has unknown widths: {', '.join(unknown)}")
    ctx.report["quantization"] = {"recipe": ctx.options.quant, "replayed": True, "choices": dict(given)}


def _measured_plan(model: ir.Model, ctx: PassContext, found: list[Unit], start: dict[str, str],
                   candidates: list[Unit], widths: tuple[str, ...], extra: dict) -> dict[str, str]:
    """Widens the candidates (every unit at widths[0] in start) greedily by KL saved per byte within
    the budget; the other units keep their start width."""
    floor = widths[0]
    names = {u.name for u in found}
    other = _other_bytes(model.graph, names, ctx)
    fixed = sum((unit_bytes(ctx, u, start[u.name]) for u in found if start[u.name] != floor), other)
    sizes = {u.name: {w: unit_bytes(ctx, u, w) for w in widths} for u in candidates}
    fp32 = _other_bytes(model.graph, names, None).file + sum(u.shape[0] * u.shape[1] * 4 for u in found)
    smallest = sum((s[floor] for s in sizes.values()), fixed)
    least = max(smallest.file, smallest.streamed)
    if ctx.options.max_size_mib is not None:
        budget = int(ctx.options.max_size_mib * MIB)
        if budget < least:
            raise GemmaExportError(f"--max-size {ctx.options.max_size_mib:g} MiB is below the all-{floor} size of "
                                   f"this model ({least / MIB:.1f} MiB)")
    elif floor == SOURCE:
        budget = int(least * (1 + SOURCE_HEADROOM))
    else:
        budget = max(least, int(DEFAULT_BUDGET[floor] * (fp32 + ctx.copied_bytes)) - ctx.copied_bytes)
    kl, tokens = sensitivity.measure(ctx, candidates, widths, lambda u, w: scheme_for_unit(ctx, u, w))
    kl = {name: {w: _rounded(v) for w, v in by_width.items()} for name, by_width in kl.items()}
    plan, used = chosen(dict(start), kl, sizes, widths, smallest, budget)
    ctx.report["quantization"] = {
        "recipe": ctx.options.quant, **extra,
        "budget_mib": round(budget / MIB, 2), "estimated_mib": round(used.file / MIB, 2),
        "estimated_streamed_mib": round(used.streamed / MIB, 2),
        "fp32_mib": round(fp32 / MIB, 2), "all_narrowest_mib": round(smallest.file / MIB, 2),
        "all_narrowest_streamed_mib": round(smallest.streamed / MIB, 2),
        "sensitivity": {"measure": MEASURES[floor == SOURCE],
                        "tokens": tokens, "kl": kl},
        "choices": dict(plan)}
    return plan


def chosen(plan: dict[str, str], kl: dict[str, dict[str, float]], sizes: dict[str, dict[str, Bytes]],
           widths: tuple[str, ...], used: Bytes, budget: int) -> tuple[dict[str, str], Bytes]:
    """The greedy (widened()) from each width of the largest unit that fits, that unit held there;
    the plan of least summed KL (then fewest streamed bytes). The largest unit (the 270M's tied
    table: ~63% of the weights) is one step the greedy's rate misjudges: read in two stages its
    int8 rows add files but stream fewer bytes than int4 at blocks of 32."""
    largest = max(sizes, key=lambda n: (sizes[n][widths[-1]].file, n))
    rest = {n: v for n, v in kl.items() if n != largest}
    best = None
    for w in widths[widths.index(plan[largest]):]:
        start = used + sizes[largest][w] - sizes[largest][plan[largest]]
        if not start.within(budget):
            continue
        p, u = widened({**plan, largest: w}, rest, sizes, widths, start, budget)
        key = (sum(kl[n][p[n]] for n in kl), u.streamed)
        if best is None or key < best[0]:
            best = (key, p, u)
    return best[1], best[2]


def widened(plan: dict[str, str], kl: dict[str, dict[str, float]], sizes: dict[str, dict[str, Bytes]],
            widths: tuple[str, ...], used: Bytes, budget: int) -> tuple[dict[str, str], Bytes]:
    """The greedy upgrades from `plan` (its bytes `used`): each step the largest KL saved per byte
    added (ties by name), a step's bytes the larger of what it adds to the files and to a decode
    step's stream, while both totals stay within the budget. The plan and its bytes."""
    while True:
        best = None  # (KL saved per byte, name, width), the largest; ties by name
        for name in sorted(kl):
            here = widths.index(plan[name])
            for w in widths[here + 1:]:
                added = sizes[name][w] - sizes[name][plan[name]]
                saved = kl[name][plan[name]] - kl[name][w]
                if saved > 0 and (used + added).within(budget):
                    rate = saved / max(1, added.file, added.streamed)
                    if best is None or rate > best[0]:
                        best = (rate, name, w)
        if best is None:
            return plan, used
        _, name, w = best
        used += sizes[name][w] - sizes[name][plan[name]]
        plan[name] = w


FLOAT_TYPES = ("F32", "F16", "BF16")


MEASURES = ("KL(fp32 || quantized) per position, one unit quantized at a time",
            "KL(fp32 || export) per position, one unit's kernel input rounding at a time (its blocks are the "
            "fp32 values)")


def _source_widths(found: list[Unit], method: str) -> tuple[dict[str, str], dict]:
    """`--quant source`: a unit whose every part the source stores as blocks starts at "source"; one
    stored in float stays "float"; one of a type without a decoder is re-quantized at int8 (listed).
    Also the report's source entries."""
    types, plan = {}, {}
    for unit in found:
        rows = unit.rows()
        parts = [p.source_type for p in (rows.stacked_from or [rows])]
        types[unit.name] = "+".join(dict.fromkeys(str(t) for t in parts))
        if blocks.source_blocks(rows) is not None:
            plan[unit.name] = SOURCE
        elif all(t in FLOAT_TYPES for t in parts):
            plan[unit.name] = "float"
        else:
            plan[unit.name] = "int8"
    if not any(w == SOURCE for w in plan.values()):
        raise GemmaExportError(f"--quant {method} keeps a quantized GGUF's own blocks, but this source has none "
                               f"(its weights are {', '.join(sorted(set(types.values()))) or 'not from a GGUF'}); "
                               "use --quant int8 or int4")
    return plan, {"source_types": types, "requantized": sorted(n for n, w in plan.items() if w == "int8")}


def _rounded(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def _other_bytes(graph: ir.Graph, skip: set[str], ctx: PassContext | None) -> Bytes:
    """Bytes of the initializers outside the units, in the export's float width (fp32 without ctx):
    in the files and streamed alike."""
    width = 4 if ctx is None or ctx.options.dtype == "fp32" else 2
    total = 0
    for name, value in graph.initializers.items():
        if name in skip or value.const_value is None:
            continue
        t = value.const_value
        total += t.size * width if t.dtype == ir.DataType.FLOAT else t.nbytes
    return Bytes(total, total)
