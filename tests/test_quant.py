"""The quantization math (gemma_export/quantization/blocks.py) and the 4-bit StreamedTensor writer."""

import io

import numpy as np
import onnx_ir as ir
import pytest

from gemma_export.quantization import blocks
from gemma_export.tensors import StreamedTensor, concatenated, stacked, transposed, untransposed


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_error_is_at_most_half_a_step(bits):
    w = np.random.default_rng(0).standard_normal((6, 128)).astype(np.float32)
    s = blocks.scheme(bits, 32)
    q = blocks.quantize(w, s)
    assert q.codes.max() <= s.levels and q.scales.shape == (6, 4)
    step = np.repeat(q.scales, 32, axis=1)
    assert (np.abs(blocks.dequantize(q, s) - w) <= step / 2 + 1e-6).all()


def test_int8_is_symmetric_and_keeps_zero_exact():
    w = np.array([[0.0, 1.0, -2.0, 0.5]], np.float32)
    q = blocks.quantize(w, blocks.scheme(8, 4))
    assert q.zero_points.tolist() == [[128]] and q.codes[0, 0] == 128
    assert q.scales[0, 0] == pytest.approx(2.0 / 127)


def test_block_shrinks_to_a_power_of_two_dividing_the_input():
    assert blocks.block_for(640, 256) == 128 and blocks.block_for(96, 64) == 32
    assert blocks.for_matrix(blocks.scheme(4, 256), 640).block == 128


def test_int4_has_zero_points_unless_the_target_reads_none():
    w = np.random.default_rng(1).uniform(0.1, 1.0, (2, 32)).astype(np.float32)  # all positive
    asym, sym = blocks.scheme(4, 32), blocks.scheme(4, 32, zero_points=False)
    assert not asym.symmetric and sym.symmetric
    err = [np.abs(blocks.dequantize(blocks.quantize(w, s), s) - w).max() for s in (asym, sym)]
    assert err[0] < err[1]


def test_four_bit_tensors_are_written_two_to_a_byte_low_nibble_first():
    values = np.array([[1, 2, 3, 4], [15, 0, 7, 8]], np.uint8)
    t = StreamedTensor(lambda a, b: values[a:b].astype(ir.DataType.UINT4.numpy()), (2, 4), ir.DataType.UINT4, "t")
    f = io.BytesIO()
    t.tofile(f)
    assert f.getvalue() == bytes([0x21, 0x43, 0x0F, 0x87]) and t.nbytes == 4


def test_untransposed_streams_through_packed_transposes():
    a, b = (np.arange(n * 3, dtype=np.float32).reshape(n, 3) for n in (2, 4))
    side = concatenated([transposed(ir.tensor(a), "aT"), transposed(ir.tensor(b), "bT")], "packed")
    rows = untransposed(side, "rows")
    assert not rows.whole  # read row range by row range, never transposed whole
    np.testing.assert_array_equal(rows.rows(1, 5), np.concatenate([a, b])[1:5])
    np.testing.assert_array_equal(stacked([ir.tensor(a), ir.tensor(b)], "s").numpy(), np.concatenate([a, b]))


def test_int8_blocks_rounds_each_block_on_its_own_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    x[0, 5] = 100.0  # an outlier coarsens its own block only
    y = blocks.int8_blocks(x, 32)
    scales = np.abs(x.reshape(3, 2, 32)).max(-1) / 127
    err = np.abs(y - x).reshape(3, 2, 32).max(-1)
    assert np.all(err <= scales / 2 + 1e-6)
    assert err[0, 0] > 10 * err[0, 1]
    assert np.array_equal(blocks.int8_blocks(y, 32), y)  # already on the grid: unchanged
