"""The tied lm_head in two stages: an int4 scan of the vocabulary picks `--lm-head-candidates` k
candidates per position (TopK), their rows of the tied table are looked up (a Gather that
quantize_embedding turns into a GatherBlockQuantized of the stored int8 rows, the token lookup's
own bytes) and re-scored with fp32 activations, and the scores are scattered back into the scan's
logits: the graph still returns full logits. Its top k are the candidates, at the int8 (or float)
head's values with fp32 activations; the tail keeps the scan's int4 values, each capped at the
lowest candidate's score (the scan ranked it below every candidate). So greedy decoding and top-k
sampling with top_k <= k see exactly that head wherever its top tokens are among the candidates
(on the 270M's text the true top-1 always was, within the scan's top 7); other sampling settings
see the int4 tail too. Gemma 2's final softcap reads the scattered logits (it follows the lm_head
in the graph).

Why: a decode step streams every weight once, and the 270M's tied table is ~63% of them; the scan
streams 5 bits a weight (blocks of 64) against the int8 head's 10 (blocks of 32, prepacked), and
re-scoring k rows costs little. The recipe prices the head so (units.unit_bytes) and the pass acts
where it pays (units.reads_in_two_stages): the table's planned width wider than the scan, and k
below the vocabulary.

ort-cpu only: the `onnx` and `tensorrt` targets read the table through one DequantizeLinear,
which a Gather of candidate rows would dequantize whole every step; ort-cuda's kernels keep fp32
activations and do not prepack, and GatherBlockQuantized's CUDA path is untested here.
"""

from __future__ import annotations

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import add_node, constant_int64, initializer_of, replace_value
from gemma_export.passes.quantize_matmuls import MS_DOMAIN, matmul_nbits
from gemma_export.quantization import lm_head_scan
from gemma_export.quantization.units import Unit, reads_in_two_stages, width_of
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig
from gemma_graphs.roles import roles

NAME = lm_head_scan.PASS
REQUIRES = ("quant_recipe", "tied_lm_head")  # the plan's width for the table; the Gemm it reads it with
# The exact sampling settings, for the manifest and `inspect`.
EXACT = "greedy, and top-k sampling with top_k <= candidates"


def acts(target: Target, options: ExportOptions, config: GemmaConfig) -> bool:
    return lm_head_scan.enabled(target, options)


def run(model: ir.Model, ctx: PassContext) -> int:
    graph = model.graph
    embedding = roles(ctx.config).embedding
    heads = [n for n in graph if n.op_type == "Gemm" and len(n.inputs) == 2 and n.attributes.get_int("transB", 0) == 1
             and (t := initializer_of(n.inputs[1])) is not None and t.name == embedding]
    if not heads:
        ctx.left_alone(NAME, embedding, "no Gemm reads the tied table as the lm_head")
        return 0
    head = heads[0]
    table = head.inputs[1]
    unit = Unit(table, [head], stored_as_rows=True)
    width = width_of(ctx, embedding)
    k = ctx.options.lm_head_candidates
    if not reads_in_two_stages(ctx, unit, width):
        why = f"{k} candidates are not fewer than the {unit.shape[0]} rows" if k >= unit.shape[0] else \
            f"the table's planned width ({width}) makes a scan stream no fewer bytes than the head"
        ctx.left_alone(NAME, head.name, why)
        return 0
    h = head.inputs[0]  # [positions, hidden]
    scheme = lm_head_scan.scan_scheme(ctx, unit.shape[1])
    scan = matmul_nbits(graph, head, h, table.const_value, scheme, f"{embedding}.scan")
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    top = add_node(graph, head, "TopK", [scan, constant_int64(graph, f"const.lm_head_candidates_{k}", [k])],
                   {"axis": -1, "largest": 1, "sorted": 0}, num_outputs=2, name="lm_head.candidates")
    indices = top.outputs[1]  # [positions, k]
    rows = add_node(graph, head, "Gather", [table, indices], {"axis": 0}, name="lm_head.candidate_rows")
    column = add_node(graph, head, "Unsqueeze", [h, constant_int64(graph, "const.last_axis", [-1])])
    scores = add_node(graph, head, "MatMul", [rows.outputs[0], column.outputs[0]], name="lm_head.rescore")
    flat = add_node(graph, head, "Squeeze", [scores.outputs[0], constant_int64(graph, "const.last_axis", [-1])])
    lowest = add_node(graph, head, "ReduceMin", [flat.outputs[0], constant_int64(graph, "const.last_axis", [-1])],
                      {"keepdims": 1})
    tail = add_node(graph, head, "Min", [scan, lowest.outputs[0]], name="lm_head.tail")
    logits = add_node(graph, head, "ScatterElements", [tail.outputs[0], indices, flat.outputs[0]], {"axis": 1},
                      name="lm_head.scattered")
    replace_value(head.outputs[0], logits.outputs[0])
    graph.remove(head, safe=True)
    ctx.report[NAME] = {"candidates": k, "scan": {"bits": scheme.bits, "block": scheme.block},
                        "rows": width, "exact": EXACT,
                        "tail": f"the int{scheme.bits} scan's logits (blocks of {scheme.block})"}
    return 1
