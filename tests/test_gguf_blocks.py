"""gguf_blocks decodes each kept GGUF type into codes, scales, zero points and offsets whose values
equal gguf's own dequantize (up to float rounding of products of scales)."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from gemma_export.checkpoints.gguf_blocks import DECODERS, decode
from gemma_export.quantization.blocks import dequantize
from test_gguf import random_blocks

K = 512


@pytest.mark.parametrize("qtype", list(DECODERS), ids=lambda q: q.name)
def test_decoded_blocks_equal_gguf_dequantize(qtype):
    raw = random_blocks(qtype, 6, K)
    blocks, scheme = decode(raw, qtype, K)
    expected = gguf.quants.dequantize(raw, qtype).reshape(6, K)
    assert blocks.codes.max() < 2 ** scheme.bits
    tolerance = 1e-6 * np.abs(expected).max()
    np.testing.assert_allclose(dequantize(blocks, scheme), expected, rtol=1e-6, atol=tolerance)
    assert scheme.offsets == (blocks.offsets is not None) == (qtype in (Q.Q4_1, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q2_K))
    assert scheme.symmetric == (qtype in (Q.Q8_0, Q.Q4_0))
