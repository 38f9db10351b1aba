"""Tensors whose bytes are produced while they are written: read from the checkpoint by row
ranges, converted (cast, transpose, quantize, ...) and written chunk by chunk, so an export never
holds more than one chunk of a big tensor in memory. Passes build them; the emitter writes them.

Built on onnx_ir's public LazyTensor: evaluated whole only when something asks for the whole
array; its writes (tofile, tobytes) are overridden to go row range by row range.
"""

from __future__ import annotations

from typing import Callable

import ml_dtypes
import numpy as np
import onnx_ir as ir

CHUNK_BYTES = 32 * 1024 * 1024

RowReader = Callable[[int, int], np.ndarray]

_NUMPY = {
    ir.DataType.FLOAT: np.dtype(np.float32),
    ir.DataType.FLOAT16: np.dtype(np.float16),
    ir.DataType.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    ir.DataType.UINT8: np.dtype(np.uint8),
    ir.DataType.INT8: np.dtype(np.int8),
    ir.DataType.INT64: np.dtype(np.int64),
    ir.DataType.UINT4: np.dtype(ml_dtypes.uint4),
    ir.DataType.INT4: np.dtype(ml_dtypes.int4),
}
_FOUR_BIT = (ir.DataType.UINT4, ir.DataType.INT4)


class StreamedTensor(ir.LazyTensor):
    """A tensor defined by a function giving rows [start, stop) of dim 0 in its final dtype."""

    # How it was built, where untransposed() can stream through it instead of transposing it whole.
    transpose_of: StreamedTensor | None = None
    side_by_side: list[StreamedTensor] | None = None
    # (initializer name, its tensor, first row): these bytes are rows of that initializer; saved
    # as a reference into its external data, never written twice (emit/artifact.py)
    view_of: tuple[str, ir.TensorProtocol, int] | None = None
    # one above the other (stacked()): the parts, for readers of their sources' blocks
    stacked_from: list[StreamedTensor] | None = None
    # a checkpoint tensor as its file stores it, for `--quant source`: its type's name ("Q8_0", "F16",
    # ...) and, where it is kept as blocks, (rows -> blocks.Quantized, blocks.Scheme; gemma_export.quantization.blocks)
    source_type: str | None = None
    source_blocks: tuple[Callable, object] | None = None

    def __init__(self, rows: RowReader, shape: tuple[int, ...], dtype: ir.DataType, name: str,
                 *, whole: bool = False):
        frozen = ir.Shape(shape)
        frozen.freeze()
        super().__init__(lambda: ir.Tensor(self.numpy(), dtype=dtype), dtype, frozen, name=name)
        self.read = rows
        self.whole = whole  # produce it in one piece (a transpose reads every source row)

    def rows(self, start: int, stop: int) -> np.ndarray:
        out = self.read(start, stop)
        expected = (stop - start, *self.shape.numpy()[1:])
        if out.shape != expected or out.dtype != _NUMPY[self.dtype]:
            raise AssertionError(f"{self.name}: produced {out.dtype}{list(out.shape)}, "
                                 f"declared {_NUMPY[self.dtype]}{list(expected)}")
        return out

    def chunks(self):
        shape = self.shape
        n = shape[0] if shape.rank() else 1
        if shape.rank() == 0 or self.whole:
            yield self.numpy()
            return
        row_bytes = max(1, self.nbytes // max(n, 1))
        step = max(1, CHUNK_BYTES // row_bytes)
        for start in range(0, n, step):
            yield self.rows(start, min(n, start + step))

    def numpy(self) -> np.ndarray:
        if self.shape.rank() == 0:
            return self.read(0, 1).reshape(())
        return self.rows(0, self.shape[0])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __dlpack__(self, *, stream=None):
        return self.numpy().__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.numpy().__dlpack_device__()

    def tobytes(self) -> bytes:
        return b"".join(self._bytes(c) for c in self.chunks())

    def tofile(self, file) -> None:
        for chunk in self.chunks():
            file.write(self._bytes(chunk))

    def _bytes(self, chunk: np.ndarray):
        """4-bit values go two to a byte, low nibble first (ONNX's packing); a chunk holds whole rows,
        so an even row length keeps every chunk on byte boundaries."""
        if self.dtype in _FOUR_BIT:
            if chunk.size % 2:
                raise AssertionError(f"{self.name}: 4-bit rows of odd length cannot be written in chunks")
            nibbles = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8) & 0x0F
            return (nibbles[0::2] | (nibbles[1::2] << 4)).data
        return np.ascontiguousarray(chunk).reshape(-1).view(np.uint8).data  # bf16 has no buffer format

    def __repr__(self) -> str:
        return f"StreamedTensor<{self.dtype},{self.shape}>(name={self.name!r})"


def mapped(tensor: ir.TensorProtocol, fn: Callable[[np.ndarray], np.ndarray], name: str,
           dtype: ir.DataType | None = None, shape: tuple[int, ...] | None = None,
           whole: bool | None = None) -> StreamedTensor:
    """A row-wise function of another tensor (cast, add a constant, quantize rows, ...)."""
    base = as_streamed(tensor)
    return StreamedTensor(lambda a, b: fn(base.rows(a, b)), shape or tuple(base.shape.numpy()),
                          dtype or base.dtype, name, whole=base.whole if whole is None else whole)


def transposed(tensor: ir.TensorProtocol, name: str) -> StreamedTensor:
    """The 2-D transpose; produced whole, since every output row needs every input row."""
    base = as_streamed(tensor)
    rows, cols = base.shape.numpy()

    def read(a: int, b: int) -> np.ndarray:
        return np.ascontiguousarray(base.rows(0, rows)[:, a:b].T)

    out = StreamedTensor(read, (cols, rows), base.dtype, name, whole=True)
    out.transpose_of = base  # read by untransposed()
    return out


def concatenated(tensors: list[ir.TensorProtocol], name: str) -> StreamedTensor:
    """2-D tensors with equal row counts side by side (axis 1), e.g. packed [in, q+k+v] weights."""
    parts = [as_streamed(t) for t in tensors]
    rows = parts[0].shape[0]
    if any(p.shape.rank() != 2 or p.shape[0] != rows or p.dtype != parts[0].dtype for p in parts):
        raise AssertionError(f"{name}: cannot place {[f'{p.dtype}{list(p.shape)}' for p in parts]} side by side")
    cols = sum(p.shape[1] for p in parts)
    out = StreamedTensor(lambda a, b: np.concatenate([p.rows(a, b) for p in parts], axis=1), (rows, cols),
                         parts[0].dtype, name, whole=any(p.whole for p in parts))
    out.side_by_side = parts  # read by untransposed()
    return out


def row_view(initializer: ir.Value, start: int, stop: int, name: str) -> StreamedTensor:
    """Rows [start, stop) of an initializer, stored as a reference to its bytes (see view_of)."""
    base = as_streamed(initializer.const_value)
    if base.dtype in _FOUR_BIT:
        raise AssertionError(f"{name}: 4-bit rows are not byte-addressable views")
    out = StreamedTensor(lambda a, b: base.rows(start + a, start + b), (stop - start, *base.shape.numpy()[1:]),
                         base.dtype, name, whole=base.whole)
    out.view_of = (initializer.name, initializer.const_value, start)
    return out


def flattened(tensor: ir.TensorProtocol, name: str) -> StreamedTensor:
    """[d0, d1, ..., K] as [d0 * d1 * ..., K] rows (a 2-D tensor as it is), read through dim 0."""
    base = as_streamed(tensor)
    shape = tuple(base.shape.numpy())
    if len(shape) == 2:
        return base
    inner, k = int(np.prod(shape[1:-1])), shape[-1]

    def read(a: int, b: int) -> np.ndarray:
        lo, hi = a // inner, -(-b // inner)
        return base.rows(lo, hi).reshape(-1, k)[a - lo * inner: b - lo * inner]

    out = StreamedTensor(read, (shape[0] * inner, k), base.dtype, name, whole=base.whole)
    out.source_type = base.source_type
    return out


def untransposed(tensor: ir.TensorProtocol, name: str) -> StreamedTensor:
    """The 2-D transpose, streamed by rows where the tensor is itself a transpose (or transposes
    side by side, e.g. packed [in, out] weights): quantizers want the [out, in] rows back."""
    base = as_streamed(tensor)
    if base.transpose_of is not None:
        return base.transpose_of
    if base.side_by_side is not None:
        return stacked([untransposed(p, f"{name}.{i}") for i, p in enumerate(base.side_by_side)], name)
    return transposed(base, name)


def stacked(tensors: list[ir.TensorProtocol], name: str) -> StreamedTensor:
    """2-D tensors with equal row lengths one above the other (axis 0), read row range by row range."""
    parts = [as_streamed(t) for t in tensors]
    starts = np.cumsum([0] + [p.shape[0] for p in parts])

    def read(a: int, b: int) -> np.ndarray:
        pieces = [p.rows(max(a, s) - s, min(b, e) - s) for p, s, e in zip(parts, starts, starts[1:]) if a < e and b > s]
        return np.concatenate(pieces, axis=0)

    out = StreamedTensor(read, (int(starts[-1]), parts[0].shape[1]), parts[0].dtype, name,
                         whole=any(p.whole for p in parts))
    out.stacked_from = parts
    return out


def sampled_rows(rows: StreamedTensor, count: int) -> np.ndarray:
    """Every ceil(n / count)-th row (at most `count`), spread over the matrix, read chunk by chunk, fp32."""
    n = rows.shape[0]
    step = max(1, -(-n // count))
    chunk = step * 1024
    return np.concatenate([rows.rows(a, min(n, a + chunk))[::step] for a in range(0, n, chunk)]).astype(np.float32)


def as_streamed(tensor: ir.TensorProtocol) -> StreamedTensor:
    if isinstance(tensor, StreamedTensor):
        return tensor
    array = tensor.numpy()
    dtype = tensor.dtype
    return StreamedTensor(lambda a, b: array[a:b] if array.ndim else array.reshape(1), tuple(array.shape),
                          dtype, tensor.name or "")


def numpy_dtype(dtype: ir.DataType) -> np.dtype:
    return _NUMPY[dtype]
