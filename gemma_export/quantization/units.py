"""The units of quantization: the weights the quantizers take, and the block scheme each is stored
in at a width.

The units are the weights of the products the quantizers take: every MatMul with a 2-D float
weight (packed q/k/v and gate/up count as one), the tied embedding (its lookup and the lm_head
read one table), and the tables only looked up (Gemma 4's per-layer embedding and each layer's
expert tables, quantize_lookups; one whose last axis has no block of 16 or more stays float). The
roles come from the model definition (gemma_graphs.roles), never from literal parameter names.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import initializer_of
from gemma_export.quantization import blocks, lm_head_scan
from gemma_export.quantization.method import FLOAT, SOURCE, QuantMethod
from gemma_export.tensors import StreamedTensor, flattened, untransposed
from gemma_graphs.roles import Roles, roles

MIN_BLOCK = 16  # the kernels' smallest block (blocks.block_for)


@dataclasses.dataclass
class Unit:
    """One quantizable weight and the products that read it (their input 0 is the activation); a
    lookup table has none (only Gathers read it)."""
    weight: ir.Value
    products: list[ir.Node]
    stored_as_rows: bool = False  # [..., in] as stored (the embedding, lookup tables); else [in, out] (MatMul weights)

    @property
    def name(self) -> str:
        return self.weight.name

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


def method_of(ctx: PassContext) -> QuantMethod:
    return QuantMethod.parse(ctx.options.quant)


# Tables read only by Gathers that are units too (quantized along their last axis, the products'
# input axis): Gemma 4's per-layer embedding (an embedding: --keep-embeddings-fp keeps it float)
# and each layer's expert tables [experts, out, in], whose chosen rows each token gathers.
def _lookup_table(weight: ir.Value, ctx: PassContext, named: Roles) -> bool:
    if weight.dtype != ir.DataType.FLOAT or weight.shape is None or weight.shape[-1] % MIN_BLOCK:
        return False  # float, or no block fits its last axis (it stays float)
    if weight.name == named.per_layer_table:
        return not ctx.options.keep_embeddings_fp
    return weight.name in named.expert_tables


def units(graph: ir.Graph, ctx: PassContext) -> list[Unit]:
    """Every weight the quantizers will take, in graph order. Gemma 4's expert router stays float:
    its few weights choose which experts run, and a rounding there swaps whole experts (llama.cpp
    keeps it unquantized in every type too); so do Gemma 3n's AltUp routers and coefficients, a
    few thousand weights that mix every token's streams."""
    named = roles(ctx.config)
    found: dict[str, Unit] = {}
    for node in graph:
        if node.op_type == "MatMul" and node.domain == "":
            weight = initializer_of(node.inputs[1])
            # an input axis with no block of 16 or more (a tiny rank, Gemma 3n's LAuReL) stays float
            if weight is not None and weight.shape is not None and weight.shape.rank() == 2 \
                    and weight.dtype == ir.DataType.FLOAT and not named.kept_float(weight.name) \
                    and weight.shape[0] % MIN_BLOCK == 0:
                found.setdefault(weight.name, Unit(weight, [])).products.append(node)
        elif node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
            weight = initializer_of(node.inputs[0])
            if weight is not None and _lookup_table(weight, ctx, named):
                found.setdefault(weight.name, Unit(weight, [], stored_as_rows=True))
        elif node.op_type == "Gemm" and not ctx.options.keep_embeddings_fp:
            weight = initializer_of(node.inputs[1])
            if weight is not None and weight.name == named.embedding and node.attributes.get_int("transB", 0) == 1:
                found.setdefault(weight.name, Unit(weight, [], stored_as_rows=True)).products.append(node)
    return list(found.values())


def scheme_for_unit(ctx: PassContext, unit: Unit, width: str) -> blocks.Scheme | None:
    """The block scheme a unit is stored in at this width (None: float)."""
    if width == SOURCE:
        return blocks.source_blocks(unit.rows())[1]
    return scheme_for(ctx, width, unit.shape[1])


def scheme_for(ctx: PassContext, width: str, k: int) -> blocks.Scheme | None:
    """The block scheme of one width ("int4", "int8", "float") for a weight of k inputs (None: float)."""
    if width == FLOAT:
        return None
    bits = 8 if width == "int8" else 4
    return blocks.for_matrix(blocks.scheme(bits, ctx.options.block_size, zero_points=ctx.target.int4_zero_points), k)


def width_of(ctx: PassContext, name: str) -> str:
    """A weight's planned width; a weight the recipe did not see gets --quant's own width."""
    return ctx.quant_plan.get(name) or method_of(ctx).width


def planned(ctx: PassContext, unit: Unit) -> tuple[blocks.Scheme, blocks.BlockReader | None] | None:
    """How the quantizers store a unit: its scheme and, for the source's own blocks, their reader
    (None: quantize the rows); None when it stays in float."""
    width = width_of(ctx, unit.name)
    if width == SOURCE:
        read, scheme = blocks.source_blocks(unit.rows())
        return scheme, read
    scheme = scheme_for(ctx, width, unit.shape[1])
    return None if scheme is None else (scheme, None)


def quantized_units(graph: ir.Graph, ctx: PassContext, kind: Callable[[Unit], bool]
                    ) -> list[tuple[Unit, blocks.Scheme, blocks.BlockReader | None]]:
    """The units of one kind that the plan stores quantized, each with planned()'s scheme and
    block reader (none without --quant). The kind is chosen first: a later pass also sees the
    small MatMuls an earlier one added (offset terms), which are no units of the plan."""
    if not method_of(ctx).quantizes:
        return []
    chosen = [(unit, planned(ctx, unit)) for unit in units(graph, ctx) if kind(unit)]
    return [(unit, *plan) for unit, plan in chosen if plan is not None]


def float_bytes(ctx: PassContext) -> int:
    return 4 if ctx.options.dtype == "fp32" else 2


def unit_bytes(ctx: PassContext, unit: Unit, width: str) -> blocks.Bytes:
    """A unit's bytes at a width: in the files, exactly the tensors the quantizers write for it
    (GatherBlockQuantized's own zero points, a byte a block: beside MatMulNBits' packed ones for
    the tied table, which both read, instead of them for a table only looked up), and streamed per
    decode step by its products (blocks.streamed_bytes; a table only looked up streams just the
    rows it gathers: nothing here). A tied lm_head read in two stages (lm_head_scan) streams its
    scan and candidate rows, and adds the scan to the files."""
    n, k = unit.shape
    scheme = scheme_for_unit(ctx, unit, width)
    nbits = ctx.target.quantized_matmul == "MatMulNBits"
    file = blocks.stored_bytes(n, k, scheme, float_bytes(ctx), "nbits" if nbits else "dequantize_linear")
    if scheme is not None and nbits and unit.stored_as_rows and not scheme.symmetric:
        blocks_per_row = k // scheme.block
        file += n * blocks_per_row - (0 if unit.products else n * (-(-blocks_per_row // 2)))
    if not unit.products:
        return blocks.Bytes(file, 0)
    streamed = blocks.streamed_bytes(n, k, scheme, float_bytes(ctx), prepacked=ctx.target.int8_activations)
    if reads_in_two_stages(ctx, unit, width):
        two_stage = lm_head_scan.two_stage_bytes(ctx, unit, scheme)
        return blocks.Bytes(file + two_stage.file, two_stage.streamed)
    return blocks.Bytes(file, streamed)


def reads_in_two_stages(ctx: PassContext, unit: Unit, width: str) -> bool:
    """Whether the tied lm_head at this width is read in two stages (passes/two_stage_lm_head.py):
    where the target can and its scan streams fewer bytes than the head would."""
    n, k = unit.shape
    scheme = scheme_for_unit(ctx, unit, width)
    two_stage = lm_head_scan.two_stage_bytes(ctx, unit, scheme)
    return two_stage is not None and two_stage.streamed < blocks.streamed_bytes(
        n, k, scheme, float_bytes(ctx), prepacked=ctx.target.int8_activations)
