"""The quantization recipe: which width each quantizable weight gets (`--quant`), written to
ctx.quant_plan for quantize_matmuls, quantize_embedding and quantize_lookups, and to the
manifest's report.

The units are the weights of the products the quantizers take: every MatMul with a 2-D float
weight (packed q/k/v and gate/up count as one), the tied embedding (its lookup and the lm_head
read one table), and the tables only looked up (Gemma 4's per-layer embedding and each layer's
expert tables, quantize_lookups; one whose last axis has no block of 16 or more stays float).
Each gets "int4", "int8", "float" or (`--quant source`) "source".

`--quant int4` / `int8` start every unit at that width and upgrade the units whose quantization
hurts most, by measurement (gemma_export/sensitivity.py: the KL divergence of the model's output
from fp32 on calibration text when that unit alone is quantized), while the estimated size stays
within a budget: `--max-size` MiB, or by default a fraction of the fp32 size (DEFAULT_BUDGET).
The upgrades are taken greedily by KL saved per byte added; sensitivities are rounded to
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

import dataclasses
import math
from typing import Callable

import onnx_ir as ir

from gemma_export import quant, sensitivity
from gemma_export.errors import GemmaExportError
from gemma_export.tensors import StreamedTensor, flattened, untransposed
from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import initializer_of
from gemma_export.passes.tied_lm_head import EMBEDDING
from gemma_export.targets import DEFAULT_BUDGET, SOURCE_HEADROOM, ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "quant_recipe"
AFTER = ("activation_scaling",)  # the recipe measures the scaled graph
WIDTHS = ("int4", "int8", "float")  # narrowest first
SOURCE = "source"  # a quantized GGUF's own blocks (--quant source); its wider width is "float"
MIN_BLOCK = 16  # the kernels' smallest block (quant.block_for)
SIGNIFICANT_DIGITS = 3
MIB = 2 ** 20


@dataclasses.dataclass
class Unit:
    """One quantizable weight and the products that read it (their input 0 is the activation); a
    lookup table has none (only Gathers read it)."""
    weight: ir.Value
    products: list[ir.Node]

    @property
    def name(self) -> str:
        return self.weight.name

    @property
    def stored_as_rows(self) -> bool:
        """[..., in] as stored (the embedding, lookup tables); else [in, out] (MatMul weights)."""
        return self.weight.name == EMBEDDING or not self.products

    def rows(self) -> StreamedTensor:
        """The weight as streamed [out, in] rows, the layout the quantizers read (a table of more
        dims: its leading dims flattened)."""
        if self.stored_as_rows:
            return flattened(self.weight.const_value, self.weight.name + ".rows")
        return untransposed(self.weight.const_value, self.weight.name + ".rows")

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of rows()"""
        dims = self.weight.shape.numpy()
        if self.stored_as_rows:
            return math.prod(dims[:-1]), dims[-1]
        return dims[1], dims[0]


# Tables read only by Gathers that are units too (quantized along their last axis, the products'
# input axis): Gemma 4's per-layer embedding (an embedding: --keep-embeddings-fp keeps it float)
# and each layer's expert tables [experts, out, in], whose chosen rows each token gathers.
PER_LAYER_TABLE = "model.embed_tokens_per_layer.weight"
EXPERT_TABLES = (".experts.gate_up_proj", ".experts.down_proj")


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return options.quant != "none"


def _lookup_table(weight: ir.Value, ctx: PassContext) -> bool:
    if weight.dtype != ir.DataType.FLOAT or weight.shape is None or weight.shape[-1] % MIN_BLOCK:
        return False  # float, or no block fits its last axis (it stays float)
    if weight.name == PER_LAYER_TABLE:
        return not ctx.options.keep_embeddings_fp
    return weight.name.endswith(EXPERT_TABLES)


# Gemma 4's expert router stays float: its few weights choose which experts run, and a rounding
# there swaps whole experts (llama.cpp keeps it unquantized in every type too).
FLOAT_WEIGHTS = (".router.",)


def units(graph: ir.Graph, ctx: PassContext) -> list[Unit]:
    """Every weight the quantizers will take, in graph order."""
    found: dict[str, Unit] = {}
    for node in graph:
        if node.op_type == "MatMul" and node.domain == "":
            weight = initializer_of(node.inputs[1])
            if weight is not None and weight.shape is not None and weight.shape.rank() == 2 \
                    and weight.dtype == ir.DataType.FLOAT and not any(s in weight.name for s in FLOAT_WEIGHTS):
                found.setdefault(weight.name, Unit(weight, [])).products.append(node)
        elif node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
            weight = initializer_of(node.inputs[0])
            if weight is not None and _lookup_table(weight, ctx):
                found.setdefault(weight.name, Unit(weight, []))
        elif node.op_type == "Gemm" and not ctx.options.keep_embeddings_fp:
            weight = initializer_of(node.inputs[1])
            if weight is not None and weight.name == EMBEDDING and node.attributes.get_int("transB", 0) == 1:
                found.setdefault(weight.name, Unit(weight, [])).products.append(node)
    return list(found.values())


def scheme_for_unit(ctx: PassContext, unit: Unit, width: str) -> quant.Scheme | None:
    """The block scheme a unit is stored in at this width (None: float)."""
    if width == SOURCE:
        return quant.source_blocks(unit.rows())[1]
    return scheme_for(ctx, width, unit.shape[1])


def scheme_for(ctx: PassContext, width: str, k: int) -> quant.Scheme | None:
    """The block scheme of one width for a weight of k inputs (None: float)."""
    if width == "float":
        return None
    bits = 8 if width == "int8" else 4
    return quant.for_matrix(quant.scheme(bits, ctx.options.block_size, zero_points=ctx.target.int4_zero_points), k)


def width_of(ctx: PassContext, name: str) -> str:
    """A weight's planned width; a weight the recipe did not see gets --quant's own width."""
    return ctx.quant_plan.get(name) or f"int{ctx.options.quant_bits}"


def planned(ctx: PassContext, unit: Unit) -> tuple[quant.Scheme, quant.BlockReader | None] | None:
    """How the quantizers store a unit: its scheme and, for the source's own blocks, their reader
    (None: quantize the rows); None when it stays in float."""
    width = width_of(ctx, unit.name)
    if width == SOURCE:
        read, scheme = quant.source_blocks(unit.rows())
        return scheme, read
    scheme = scheme_for(ctx, width, unit.shape[1])
    return None if scheme is None else (scheme, None)


def quantized_units(graph: ir.Graph, ctx: PassContext, kind: Callable[[Unit], bool]
                    ) -> list[tuple[Unit, quant.Scheme, quant.BlockReader | None]]:
    """The units of one kind that the plan stores quantized, each with planned()'s scheme and
    block reader (none without --quant). The kind is chosen first: a later pass also sees the
    small MatMuls an earlier one added (offset terms), which are no units of the plan."""
    if ctx.options.quant == "none":
        return []
    chosen = [(unit, planned(ctx, unit)) for unit in units(graph, ctx) if kind(unit)]
    return [(unit, *plan) for unit, plan in chosen if plan is not None]


def unit_bytes(ctx: PassContext, unit: Unit, width: str) -> int:
    n, k = unit.shape
    return quant.stored_bytes(n, k, scheme_for_unit(ctx, unit, width), 4 if ctx.options.dtype == "fp32" else 2)


def run(model: ir.Model, ctx: PassContext) -> int:
    method = ctx.options.quant
    if ctx.options.quant_bits is None and not method.startswith(SOURCE):
        return 0
    found = units(model.graph, ctx)
    extra = {}
    if method.startswith(SOURCE):
        start, extra = _source_widths(found, method)
        widths = (SOURCE, "float")
    else:
        floor = f"int{ctx.options.quant_bits}"
        start, widths = {u.name: floor for u in found}, WIDTHS[WIDTHS.index(floor):]
    candidates = [u for u in found if start[u.name] == widths[0]]
    if widths[0] == SOURCE:  # only a product's input rounding moves a kept block's output
        candidates = [u for u in candidates if u.products] if ctx.target.int8_activations else []
    if method.endswith("-uniform") or not candidates:
        ctx.quant_plan = start
        ctx.report["quantization"] = {"recipe": method, **extra, "choices": dict(start)}
    else:
        ctx.quant_plan = _measured_plan(model, ctx, found, start, candidates, widths, extra)
    return len(found)


def _measured_plan(model: ir.Model, ctx: PassContext, found: list[Unit], start: dict[str, str],
                   candidates: list[Unit], widths: tuple[str, ...], extra: dict) -> dict[str, str]:
    """Widens the candidates (every unit at widths[0] in start) greedily by KL saved per byte within
    the budget; the other units keep their start width."""
    floor = widths[0]
    names = {u.name for u in found}
    fixed = _other_bytes(model.graph, names, ctx) + sum(unit_bytes(ctx, u, start[u.name]) for u in found
                                                        if start[u.name] != floor)
    sizes = {u.name: {w: unit_bytes(ctx, u, w) for w in widths} for u in candidates}
    fp32 = _other_bytes(model.graph, names, None) + sum(u.shape[0] * u.shape[1] * 4 for u in found)
    smallest = fixed + sum(s[floor] for s in sizes.values())
    if ctx.options.max_size_mib is not None:
        budget = int(ctx.options.max_size_mib * MIB)
        if budget < smallest:
            raise GemmaExportError(f"--max-size {ctx.options.max_size_mib:g} MiB is below the all-{floor} size of "
                                   f"this model ({smallest / MIB:.1f} MiB)")
    elif floor == SOURCE:
        budget = int(smallest * (1 + SOURCE_HEADROOM))
    else:
        budget = max(smallest, int(DEFAULT_BUDGET[floor] * fp32))
    kl, tokens = sensitivity.measure(ctx, candidates, widths, lambda u, w: scheme_for_unit(ctx, u, w))
    kl = {name: {w: _rounded(v) for w, v in by_width.items()} for name, by_width in kl.items()}
    plan = dict(start)
    used = smallest
    while True:
        best = None  # (KL saved per byte, name, width), the largest; ties by name
        for name in sorted(kl):
            here = widths.index(plan[name])
            for w in widths[here + 1:]:
                extra_bytes = sizes[name][w] - sizes[name][plan[name]]
                saved = kl[name][plan[name]] - kl[name][w]
                if saved > 0 and used + extra_bytes <= budget:
                    rate = saved / extra_bytes
                    if best is None or rate > best[0]:
                        best = (rate, name, w)
        if best is None:
            break
        _, name, w = best
        used += sizes[name][w] - sizes[name][plan[name]]
        plan[name] = w
    ctx.report["quantization"] = {
        "recipe": ctx.options.quant, **extra,
        "budget_mib": round(budget / MIB, 2), "estimated_mib": round(used / MIB, 2),
        "fp32_mib": round(fp32 / MIB, 2), "all_narrowest_mib": round(smallest / MIB, 2),
        "sensitivity": {"measure": MEASURES[floor == SOURCE],
                        "tokens": tokens, "kl": kl},
        "choices": dict(plan)}
    return plan


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
        if quant.source_blocks(rows) is not None:
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


def _other_bytes(graph: ir.Graph, skip: set[str], ctx: PassContext | None) -> int:
    """Bytes of the initializers outside the units, in the export's float width (fp32 without ctx)."""
    width = 4 if ctx is None or ctx.options.dtype == "fp32" else 2
    total = 0
    for name, value in graph.initializers.items():
        if name in skip or value.const_value is None:
            continue
        t = value.const_value
        total += t.size * width if t.dtype == ir.DataType.FLOAT else t.nbytes
    return total
