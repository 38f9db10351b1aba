"""The quantization recipe as a pass: which width each quantizable weight gets (`--quant`),
written to ctx.quant_plan for quantize_matmuls, quantize_embedding and quantize_lookups, and to the
manifest's report. The recipe itself, and what it measures, is gemma_export/quantization/recipe.py;
a plan given in (ctx.quant_plan already set) is replayed without measuring."""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.quantization import recipe
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

NAME = "quant_recipe"
AFTER = ("activation_scaling",)  # the recipe measures the scaled graph


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return options.quant != "none"


def run(model: ir.Model, ctx: PassContext) -> int:
    return recipe.plan(model, ctx)
