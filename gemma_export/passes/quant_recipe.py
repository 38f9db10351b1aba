"""The quantization recipe: which width each quantizable weight gets (`--quant`), written to
ctx.quant_plan for quantize_matmuls and quantize_embedding, and to the manifest's report.

The units are the weights of the products the quantizers take: every MatMul with a 2-D float
weight (packed q/k/v and gate/up count as one) and the tied embedding (its lookup and the lm_head
read one table). Each gets "int4", "int8" or "float".

`--quant int4` / `int8` start every unit at that width and upgrade the units whose quantization
hurts most, by measurement (gemma_export/sensitivity.py: the KL divergence of the model's output
from fp32 on calibration text when that unit alone is quantized), while the estimated size stays
within a budget: `--max-size` MiB, or by default a fraction of the fp32 size (DEFAULT_BUDGET).
The upgrades are taken greedily by KL saved per byte added; sensitivities are rounded to
SIGNIFICANT_DIGITS and ties broken by name, so the same source and options give the same choices
whatever the thread count. `--quant int4-uniform` / `int8-uniform`: every unit at that width.

Why a mix: on the real Gemma 3 270M, int4 everywhere changes about a quarter of the top-1 tokens,
most of it from a few units (the embedding / lm_head, which is also ~63% of the weights, and a
few layers' products); llama.cpp's Q4_K_M is such a mix too (Q8_0 embedding, Q5_0/Q6_K layers).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from gemma_export import quant
from gemma_export.errors import GemmaExportError
from gemma_export.tensors import StreamedTensor, as_streamed, untransposed
from gemma_export.passes.context import DEFAULT_BUDGET, PassContext
from gemma_export.passes.ir_utils import initializer_of
from gemma_export.passes.tied_lm_head import EMBEDDING

NAME = "quant_recipe"
WIDTHS = ("int4", "int8", "float")  # narrowest first
SIGNIFICANT_DIGITS = 3
MIB = 2 ** 20


@dataclasses.dataclass
class Unit:
    """One quantizable weight and the products that read it (their input 0 is the activation)."""
    weight: ir.Value
    products: list[ir.Node]

    @property
    def name(self) -> str:
        return self.weight.name

    @property
    def stored_as_rows(self) -> bool:
        """[out, in] as stored (the embedding); else [in, out] (MatMul weights)."""
        return self.weight.name == EMBEDDING

    def rows(self) -> StreamedTensor:
        """The weight as streamed [out, in] rows, the layout the quantizers read."""
        if self.stored_as_rows:
            return as_streamed(self.weight.const_value)
        return untransposed(self.weight.const_value, self.weight.name + ".rows")

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in)"""
        a, b = self.weight.shape.numpy()
        return (a, b) if self.stored_as_rows else (b, a)


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
        elif node.op_type == "Gemm" and not ctx.options.keep_embeddings_fp:
            weight = initializer_of(node.inputs[1])
            if weight is not None and weight.name == EMBEDDING and node.attributes.get_int("transB", 0) == 1:
                found.setdefault(weight.name, Unit(weight, [])).products.append(node)
    return list(found.values())


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
    if width == "source":
        read, scheme = quant.source_blocks(unit.rows())
        return scheme, read
    scheme = scheme_for(ctx, width, unit.shape[1])
    return None if scheme is None else (scheme, None)


def unit_bytes(ctx: PassContext, unit: Unit, width: str) -> int:
    n, k = unit.shape
    return quant.stored_bytes(n, k, scheme_for(ctx, width, k), 4 if ctx.options.dtype == "fp32" else 2)


def run(model: ir.Model, ctx: PassContext) -> int:
    if ctx.options.quant == "source":
        return _source_plan(model, ctx)
    bits = ctx.options.quant_bits
    if bits is None:
        return 0
    found = units(model.graph, ctx)
    floor = f"int{bits}"
    if not ctx.options.quant.endswith("-uniform") and found:
        ctx.quant_plan = _measured_plan(model, ctx, found, floor)
    else:
        ctx.quant_plan = {u.name: floor for u in found}
        ctx.report["quantization"] = {"recipe": ctx.options.quant,
                                      "choices": dict(ctx.quant_plan)}
    return len(found)


def _measured_plan(model: ir.Model, ctx: PassContext, found: list[Unit], floor: str) -> dict[str, str]:
    from gemma_export import sensitivity

    widths = WIDTHS[WIDTHS.index(floor):]
    names = {u.name for u in found}
    fixed = _other_bytes(model.graph, names, ctx)
    sizes = {u.name: {w: unit_bytes(ctx, u, w) for w in widths} for u in found}
    fp32 = _other_bytes(model.graph, names, None) + sum(u.shape[0] * u.shape[1] * 4 for u in found)
    smallest = fixed + sum(s[floor] for s in sizes.values())
    if ctx.options.max_size_mib is not None:
        budget = int(ctx.options.max_size_mib * MIB)
        if budget < smallest:
            raise GemmaExportError(f"--max-size {ctx.options.max_size_mib:g} MiB is below the all-{floor} size of "
                                   f"this model ({smallest / MIB:.1f} MiB)")
    else:
        budget = max(smallest, int(DEFAULT_BUDGET[floor] * fp32))
    kl, tokens = sensitivity.measure(model, ctx, found, widths, lambda u, w: scheme_for(ctx, w, u.shape[1]))
    kl = {name: {w: _rounded(v) for w, v in by_width.items()} for name, by_width in kl.items()}
    plan = {u.name: floor for u in found}
    used = smallest
    while True:
        best = None  # (KL saved per byte, name, width), the largest; ties by name
        for name in sorted(plan):
            here = widths.index(plan[name])
            for w in widths[here + 1:]:
                extra = sizes[name][w] - sizes[name][plan[name]]
                saved = kl[name][plan[name]] - kl[name][w]
                if saved > 0 and used + extra <= budget:
                    rate = saved / extra
                    if best is None or rate > best[0]:
                        best = (rate, name, w)
        if best is None:
            break
        _, name, w = best
        used += sizes[name][w] - sizes[name][plan[name]]
        plan[name] = w
    ctx.report["quantization"] = {
        "recipe": ctx.options.quant,
        "budget_mib": round(budget / MIB, 2), "estimated_mib": round(used / MIB, 2),
        "fp32_mib": round(fp32 / MIB, 2), "all_narrowest_mib": round(smallest / MIB, 2),
        "sensitivity": {"measure": "KL(fp32 || quantized) per position, one unit quantized at a time",
                        "tokens": tokens, "kl": kl},
        "choices": dict(plan)}
    return plan


FLOAT_TYPES = ("F32", "F16", "BF16")


def _source_plan(model: ir.Model, ctx: PassContext) -> int:
    """`--quant source`: a unit whose every part the source stores as blocks gets "source"; one
    stored in float stays "float"; one of a type without a decoder is re-quantized at int8 (listed)."""
    found = units(model.graph, ctx)
    types, plan = {}, {}
    for unit in found:
        rows = unit.rows()
        parts = [p.source_type for p in (rows.stacked_from or [rows])]
        types[unit.name] = "+".join(dict.fromkeys(str(t) for t in parts))
        if quant.source_blocks(rows) is not None:
            plan[unit.name] = "source"
        elif all(t in FLOAT_TYPES for t in parts):
            plan[unit.name] = "float"
        else:
            plan[unit.name] = "int8"
    if not any(w == "source" for w in plan.values()):
        raise GemmaExportError("--quant source keeps a quantized GGUF's own blocks, but this source has none "
                               f"(its weights are {', '.join(sorted(set(types.values()))) or 'not from a GGUF'}); "
                               "use --quant int8 or int4")
    ctx.quant_plan = plan
    ctx.report["quantization"] = {"recipe": "source", "source_types": types, "choices": dict(plan),
                                  "requantized": sorted(n for n, w in plan.items() if w == "int8")}
    return len(found)


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
