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

import numpy as np
import onnx_ir as ir

from gemma_export.tensors import StreamedTensor, as_streamed, numpy_dtype
from gemma_export.errors import GemmaExportError


@dataclasses.dataclass(frozen=True)
class Scheme:
    bits: int
    block: int  # inputs sharing a scale (and zero point)
    symmetric: bool

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1


@dataclasses.dataclass
class Quantized:
    codes: np.ndarray  # uint8 [rows, K], each < 2**bits
    scales: np.ndarray  # float32 [rows, K / block]
    zero_points: np.ndarray  # uint8 [rows, K / block]


def scheme(quant: str, block_size: int, zero_points: bool = True) -> Scheme:
    """zero_points: whether the target reads zero points (int4 is symmetric without them)."""
    if quant == "int8":
        return Scheme(8, block_size, True)
    if quant == "int4":
        return Scheme(4, block_size, not zero_points)
    raise GemmaExportError(f"no quantization scheme {quant!r}")


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
    blocks = q.codes.reshape(rows, k // s.block, s.block).astype(np.float32) - q.zero_points[..., None]
    return (blocks * q.scales[..., None]).reshape(rows, k)


def int8_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """x [rows, k] as onnxruntime's CPU MatMulNBits sees it at accuracy_level 4: rounded to int8
    symmetrically in blocks of `block` along k (one scale, max |x| / 127, per block)."""
    rows, k = x.shape
    blocks = x.astype(np.float32).reshape(rows, k // block, block)
    scales = np.abs(blocks).max(-1, keepdims=True) / 127
    safe = np.where(scales > 0, scales, 1)
    return (np.round(blocks / safe) * scales).reshape(rows, k)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 values < 16, two to a byte along the last axis, the first in the low nibble."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


# --- storage layouts: tensors streamed from the [out, in] rows of a weight -------------------

def nbits_tensors(rows: ir.TensorProtocol, s: Scheme, name: str) -> tuple[StreamedTensor, StreamedTensor,
                                                                              StreamedTensor | None]:
    """MatMulNBits' B [N, blocks, block * bits / 8] (uint8, 4-bit codes two to a byte), scales
    [N, blocks] and, asymmetric, zero points [N, ceil(blocks / 2)] (4-bit, packed). The same B is
    GatherBlockQuantized's data (quantize_axis 2, scales [N, blocks, 1])."""
    base = as_streamed(rows)
    n, k = base.shape.numpy()
    blocks = k // s.block

    def codes(a: int, b: int) -> np.ndarray:
        c = quantize(base.rows(a, b), s).codes.reshape(b - a, blocks, s.block)
        return pack_nibbles(c) if s.bits == 4 else c

    b_tensor = StreamedTensor(codes, (n, blocks, s.block * s.bits // 8), ir.DataType.UINT8, f"{name}.q",
                              whole=base.whole)
    scales = StreamedTensor(lambda a, b: quantize(base.rows(a, b), s).scales, (n, blocks),
                            ir.DataType.FLOAT, f"{name}.scales", whole=base.whole)
    if s.symmetric:
        return b_tensor, scales, None
    zero = StreamedTensor(lambda a, b: pack_nibbles(quantize(base.rows(a, b), s).zero_points),
                          (n, (blocks + 1) // 2), ir.DataType.UINT8, f"{name}.zero_points", whole=base.whole)
    return b_tensor, scales, zero


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


def for_matrix(s: Scheme, k: int) -> Scheme:
    """The scheme for one matrix with K inputs: the block shrunk to a power of two dividing K."""
    return dataclasses.replace(s, block=block_for(k, s.block))
