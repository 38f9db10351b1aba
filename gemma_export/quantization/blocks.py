"""Weight quantization as a pair of functions: `quantize` rows of an [out, in] matrix in blocks
along `in`, and `dequantize` them back (for the calibration search and the tests).

Codes are unsigned with a zero point per block (value = (code - zero_point) * scale), the form
MatMulNBits, GatherBlockQuantized and DequantizeLinear (uint4) read. A symmetric scheme has the fixed
zero point 2**(bits - 1) (8 or 128: the kernels' default, so no zero-point tensor is stored).
  int8: symmetric, one scale per block of `--block-size` inputs. Not per output channel: on the real
        Gemma 3 270M, teacher-forced top-1 agreement with fp32 (gemma_export.texts.PROMPTS) was 94.8%
        per channel, 97.4% with blocks of 64 or 128, 98.7% with blocks of 32, for the weights alone
        (fp32 activations); MatMulNBits' int8 activations (accuracy_level 4) take blocks of 32 to 96.5%.
  int4: asymmetric (min/max, a 4-bit zero point per block): 67.5% there against 60.7% symmetric at
        the same block. TensorRT imports signed int4 weights only: for it int4 is symmetric.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import onnx_ir as ir

from gemma_export.errors import GemmaExportError
from gemma_export.tensors import StreamedTensor, as_streamed, numpy_dtype


@dataclasses.dataclass(frozen=True)
class Scheme:
    bits: int
    block: int  # inputs sharing a scale (and zero point)
    symmetric: bool  # every zero point is 2**(bits - 1), the kernels' default (none stored)
    offsets: bool = False  # a float offset per block too (a GGUF source's Q4_K, Q4_1, ...)

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1


@dataclasses.dataclass(frozen=True)
class Bytes:
    """A weight's bytes two ways: in the artifact's files (what `du` counts) and streamed by a
    decode step (what its speed follows)."""
    file: int
    streamed: int

    def __add__(self, other: Bytes) -> Bytes:
        return Bytes(self.file + other.file, self.streamed + other.streamed)

    def __sub__(self, other: Bytes) -> Bytes:
        return Bytes(self.file - other.file, self.streamed - other.streamed)

    def within(self, budget: int) -> bool:
        return self.file <= budget and self.streamed <= budget


@dataclasses.dataclass
class Quantized:
    """value = scale * (code - zero_point) (+ offset), per block along a row."""
    codes: np.ndarray  # uint8 [rows, K], each < 2**bits
    scales: np.ndarray  # float32 [rows, K / block]
    zero_points: np.ndarray  # uint8 [rows, K / block]
    offsets: np.ndarray | None = None  # float32 [rows, K / block]


BlockReader = Callable[[int, int], Quantized]  # rows [start, stop) of a weight, as blocks


def scheme(bits: int, block_size: int, zero_points: bool = True) -> Scheme:
    """zero_points: whether the target reads zero points (int4 is symmetric without them)."""
    if bits == 8:
        return Scheme(8, block_size, True)
    if bits == 4:
        return Scheme(4, block_size, not zero_points)
    raise GemmaExportError(f"no {bits}-bit quantization scheme")


def block_for(k: int, wanted: int) -> int:
    """The largest power of two <= wanted that divides k, at least 16 (the kernels' minimum)."""
    block = wanted
    while block >= 16 and k % block:
        block //= 2
    if block < 16:
        raise GemmaExportError(f"an input dimension of {k} has no power-of-two block >= 16 dividing it")
    return block


def quantize(w: np.ndarray, s: Scheme) -> Quantized:
    rows, k = w.shape
    blocks = w.astype(np.float32).reshape(rows, k // s.block, s.block)
    if s.symmetric:
        half = 2 ** (s.bits - 1)
        scales = np.abs(blocks).max(-1) / (half - 1)
        zero = np.full(scales.shape, half, np.float32)
    else:
        # min <= 0 <= max: zero stays exactly representable
        lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scales = (hi - lo) / s.levels
        zero = np.clip(np.round(-lo / np.where(scales > 0, scales, 1)), 0, s.levels)
    safe = np.where(scales > 0, scales, 1)[..., None]
    codes = np.clip(np.round(blocks / safe) + zero[..., None], 0, s.levels)
    return Quantized(codes.reshape(rows, k).astype(np.uint8), scales.astype(np.float32), zero.astype(np.uint8))


def dequantize(q: Quantized, s: Scheme) -> np.ndarray:
    rows, k = q.codes.shape
    blocks = (q.codes.reshape(rows, k // s.block, s.block).astype(np.float32) - q.zero_points[..., None]) \
        * q.scales[..., None]
    if q.offsets is not None:
        blocks = blocks + q.offsets[..., None]
    return blocks.reshape(rows, k)


def common_scheme(schemes: list[Scheme]) -> Scheme:
    """One scheme that holds blocks of each of these exactly (weights packed side by side): the widest
    codes, the smallest block, zero points unless all are the default, offsets if any has them."""
    bits = max(s.bits for s in schemes)
    symmetric = all(s.symmetric and s.bits == bits for s in schemes)
    return Scheme(bits, min(s.block for s in schemes), symmetric, any(s.offsets for s in schemes))


def converted(q: Quantized, have: Scheme, want: Scheme) -> Quantized:
    """The same values in a common_scheme: blocks split (scales repeated), zero points and offsets
    made explicit (codes never change)."""
    repeat = have.block // want.block
    zero = q.zero_points if not have.symmetric else np.full(q.scales.shape, 2 ** (have.bits - 1), np.uint8)
    offsets = q.offsets if q.offsets is not None or not want.offsets else np.zeros(q.scales.shape, np.float32)
    widen = (lambda a: a) if repeat == 1 else (lambda a: np.repeat(a, repeat, axis=1))
    return Quantized(q.codes, widen(q.scales), widen(zero), None if offsets is None else widen(offsets))


def int8_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """x [rows, k] as onnxruntime's CPU MatMulNBits sees it at accuracy_level 4: rounded to int8
    symmetrically in blocks of `block` along k (one scale, max |x| / 127, per block)."""
    rows, k = x.shape
    blocks = x.astype(np.float32).reshape(rows, k // block, block)
    scales = np.abs(blocks).max(-1, keepdims=True) / 127
    safe = np.where(scales > 0, scales, 1)
    return (np.round(blocks / safe) * scales).reshape(rows, k)


def quantize_dequantize(w: np.ndarray, s: Scheme) -> np.ndarray:
    return dequantize(quantize(w, s), s)


def product_error(x: np.ndarray, stored: np.ndarray, reference: np.ndarray, input_block: int | None) -> float:
    """||Qa(x) stored^T - reference||^2 in float64: how far a quantized product's output is from
    `reference` (x W^T exactly) when it reads `stored` weights [out, in] and its input x [tokens, in]
    rounded as its kernel does (int8_blocks of input_block; None: not rounded)."""
    xq = int8_blocks(x, input_block) if input_block else x
    return float(np.square(xq.astype(np.float64) @ stored.astype(np.float64).T - reference).sum())


def stored_bytes(rows: int, k: int, s: Scheme | None, float_bytes: int, layout: str = "nbits") -> int:
    """Bytes of an [rows, k] weight in the artifact's files, exactly as the quantizers write it, or
    in float (s None). layout "nbits": MatMulNBits' tensors (codes, float32 scales, zero points packed
    two to a byte per row at 4 bits, float32 offsets where the scheme has them);
    "dequantize_linear": DequantizeLinear's (codes, float32 scales, zero points of the codes' type,
    4-bit tensors packed two to a byte over the whole tensor)."""
    if s is None:
        return rows * k * float_bytes
    blocks = k // s.block
    offsets = rows * blocks * 4 if s.offsets else 0
    if layout == "dequantize_linear":
        zero = 0 if s.symmetric else -(-rows * blocks * s.bits // 8)
        return -(-rows * k * s.bits // 8) + rows * blocks * 4 + zero + offsets
    zero = 0 if s.symmetric else rows * (-(-blocks // 2) if s.bits == 4 else blocks)
    return rows * k * s.bits // 8 + rows * blocks * 4 + zero + offsets


# MatMulNBits' CPU kernel at accuracy level 4 prepacks its weight at load: the codes, and per block
# an fp32 scale and an fp32 block sum (zero point x scale, folded with the input's block sums), zero
# points included or not. That is what a decode step streams: at blocks of 32, 10 bits a weight at
# int8 and 6 at int4 (a file holds 9 and 5.125).
PREPACKED_BLOCK_BYTES = 8


def streamed_bytes(rows: int, k: int, s: Scheme | None, float_bytes: int, prepacked: bool) -> int:
    """Bytes a product reading an [rows, k] weight streams per step: prepacked (MatMulNBits on the CPU
    at accuracy level 4) codes plus PREPACKED_BLOCK_BYTES a block (and a float offset's term), else as
    stored (float, or a kernel that reads the stored blocks)."""
    if s is None or not prepacked:
        return stored_bytes(rows, k, s, float_bytes)
    blocks = k // s.block
    return rows * k * s.bits // 8 + rows * blocks * (PREPACKED_BLOCK_BYTES + (4 if s.offsets else 0))


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 values < 16, two to a byte along the last axis, the first in the low nibble."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


# --- storage layouts: tensors streamed from the [out, in] rows of a weight -------------------

def nbits_tensors(rows: ir.TensorProtocol, s: Scheme, name: str,
                  blocks_of: BlockReader | None = None) -> tuple[StreamedTensor, ...]:
    """MatMulNBits' B [N, blocks, block * bits / 8] (uint8, 4-bit codes two to a byte), scales
    [N, blocks], zero points (None when symmetric) [N, ceil(blocks / 2)] packed at 4 bits, [N, blocks]
    at 8, and offsets (None without) [N, blocks] float. The same B is GatherBlockQuantized's data
    (quantize_axis 2, scales [N, blocks, 1]). Blocks are quantized from the rows, or read with
    blocks_of (a source's own)."""
    base = as_streamed(rows)
    n, k = base.shape.numpy()
    blocks = k // s.block
    read = blocks_of or (lambda a, b: quantize(base.rows(a, b), s))

    def codes(a: int, b: int) -> np.ndarray:
        c = read(a, b).codes.reshape(b - a, blocks, s.block)
        return pack_nibbles(c) if s.bits == 4 else c

    def zero_points(a: int, b: int) -> np.ndarray:
        z = read(a, b).zero_points
        return pack_nibbles(z) if s.bits == 4 else z

    b_tensor = StreamedTensor(codes, (n, blocks, s.block * s.bits // 8), ir.DataType.UINT8, f"{name}.q",
                              whole=base.whole)
    scales = StreamedTensor(lambda a, b: read(a, b).scales, (n, blocks), ir.DataType.FLOAT, f"{name}.scales",
                            whole=base.whole)
    zero = None if s.symmetric else StreamedTensor(
        zero_points, (n, (blocks + 1) // 2 if s.bits == 4 else blocks), ir.DataType.UINT8, f"{name}.zero_points",
        whole=base.whole)
    offsets = None if not s.offsets else StreamedTensor(
        lambda a, b: read(a, b).offsets, (n, blocks), ir.DataType.FLOAT, f"{name}.offsets", whole=base.whole)
    return b_tensor, scales, zero, offsets


def dequantize_linear_tensors(rows: ir.TensorProtocol, s: Scheme, name: str) -> tuple[
        StreamedTensor, StreamedTensor, StreamedTensor | None]:
    """DequantizeLinear's inputs (axis 1, block_size) for the [N, K] rows quantized along K: data
    [N, K] (int8/int4 symmetric, or uint4), scale [N, K / block] and, uint4, zero points like it."""
    base = as_streamed(rows)
    n, k = base.shape.numpy()
    half = 2 ** (s.bits - 1)
    if s.symmetric:
        dtype = ir.DataType.INT8 if s.bits == 8 else ir.DataType.INT4
        data = StreamedTensor(lambda a, b: (quantize(base.rows(a, b), s).codes.astype(np.int16) - half)
                              .astype(numpy_dtype(dtype)), (n, k), dtype, f"{name}.q", whole=base.whole)
    else:
        dtype = ir.DataType.UINT8 if s.bits == 8 else ir.DataType.UINT4
        data = StreamedTensor(lambda a, b: quantize(base.rows(a, b), s).codes.astype(numpy_dtype(dtype)), (n, k), dtype,
                              f"{name}.q", whole=base.whole)
    shape = (n, k // s.block)
    scale = StreamedTensor(lambda a, b: quantize(base.rows(a, b), s).scales, shape, ir.DataType.FLOAT,
                           f"{name}.scale", whole=base.whole)
    if s.symmetric:
        return data, scale, None
    zero = StreamedTensor(lambda a, b: quantize(base.rows(a, b), s).zero_points.astype(numpy_dtype(dtype)), shape,
                          dtype, f"{name}.zero_point", whole=base.whole)
    return data, scale, zero


def source_blocks(rows: StreamedTensor) -> tuple[BlockReader, Scheme] | None:
    """The checkpoint's own blocks of these [N, K] rows (a weight, or weights stacked by packing),
    in one common scheme; None unless every part is kept as blocks in its source."""
    parts = rows.stacked_from or [rows]
    if any(p.source_blocks is None for p in parts):
        return None
    schemes = [p.source_blocks[1] for p in parts]
    common = common_scheme(schemes)
    starts = np.cumsum([0] + [p.shape[0] for p in parts])

    def read(a: int, b: int) -> Quantized:
        pieces = [converted(p.source_blocks[0](max(a, lo) - lo, min(b, hi) - lo), have, common)
                  for p, have, lo, hi in zip(parts, schemes, starts, starts[1:]) if a < hi and b > lo]
        return Quantized(*(None if pieces[0].offsets is None and f == "offsets" else
                           np.concatenate([getattr(q, f) for q in pieces]) for f in
                           ("codes", "scales", "zero_points", "offsets")))

    return read, common


def for_matrix(s: Scheme, k: int) -> Scheme:
    """The scheme for one matrix with K inputs: the block shrunk to a power of two dividing K."""
    return dataclasses.replace(s, block=block_for(k, s.block))
