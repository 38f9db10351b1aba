"""The two-stage lm_head's first stage (passes/two_stage_lm_head.py): an int4 scan of the tied
table that picks the candidates the stored rows re-score. Its scheme and bytes, for the pass and
for the recipe's byte model (units.unit_bytes), which prices a head read in two stages by what it
streams (the scan and the candidates' rows) and stores (the scan beside the table).

SCAN_BLOCK: on the real Gemma 3 270M the true top-1 token lies within an int4 scan's top 7 at
blocks of 64 over 1139 positions of real text (top 13 at 32, top 24 at 128); 64 streams 5 bits a
weight, 128 4.5.
"""

from __future__ import annotations

from gemma_export.passes.context import PassContext
from gemma_export.quantization import blocks
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.roles import roles

PASS = "two_stage_lm_head"
SCAN_BITS = 4
SCAN_BLOCK = 64


def enabled(target: Target, options: ExportOptions) -> bool:
    """The target has the pass, --lm-head-candidates is on, and the export quantizes the tied table in fp32."""
    return PASS in target.passes and options.lm_head_candidates > 0 and options.quant != "none" \
        and options.dtype == "fp32" and not options.keep_embeddings_fp


def scan_scheme(ctx: PassContext, k: int) -> blocks.Scheme:
    return blocks.for_matrix(blocks.scheme(SCAN_BITS, SCAN_BLOCK, zero_points=ctx.target.int4_zero_points), k)


def two_stage_bytes(ctx: PassContext, unit, scheme: blocks.Scheme | None) -> blocks.Bytes | None:
    """The bytes a tied lm_head read in two stages adds to the files (the scan) and streams per step
    (the scan, and the candidates' rows at the table's scheme); None where it cannot be: not the
    tied table's head, rows no wider than the scan, or fewer rows than candidates."""
    n, k = unit.shape
    candidates = ctx.options.lm_head_candidates
    if not enabled(ctx.target, ctx.options) or not (unit.stored_as_rows and unit.products) \
            or unit.name != roles(ctx.config).embedding or candidates >= n \
            or (scheme is not None and scheme.bits <= SCAN_BITS):
        return None
    scan = scan_scheme(ctx, k)
    rows = blocks.stored_bytes(candidates, k, scheme, 4)
    return blocks.Bytes(blocks.stored_bytes(n, k, scan, 4),
                        blocks.streamed_bytes(n, k, scan, 4, prepacked=ctx.target.int8_activations) + rows)
