"""A quantized GGUF tensor's blocks as integer codes, a scale, an integer zero point and (for the
types that have one) a float offset per block: value = scale * (code - zero_point) + offset.
That is the form MatMulNBits and GatherBlockQuantized read (the offset as an extra term), so
`--quant source` keeps llama.cpp's rounding instead of quantizing its dequantized values again.

Layouts follow ggml's block structs (ggml-common.h): little-endian float16 scales, 4-bit values
low nibble first, the fifth / sixth bits in separate high-bit arrays.

    type   block  codes  zero point  offset
    Q8_0   32     0..255 128         -
    Q4_0   32     0..15  8           -
    Q4_1   32     0..15  0           m
    Q5_0   32     0..31  16          -
    Q5_1   32     0..31  0           m
    Q4_K   32     0..15  0           -dmin * m_j   (scale d * s_j, 6-bit s_j and m_j)
    Q5_K   32     0..31  0           -dmin * m_j
    Q6_K   16     0..63  32          -             (scale d * s_j, int8 s_j)
    Q3_K   16     0..7   4           -             (scale d * (s_j - 32), 6-bit s_j)
    Q2_K   16     0..3   0           -dmin * m_j   (scale d * s_j, 4-bit s_j and m_j)
Other quantized types (IQ*, TQ*, MXFP4) have no decoder here: their tensors are re-quantized from
their dequantized values, and the export's report lists them.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q

from gemma_export.quantization.blocks import Quantized, Scheme


def _f16(raw: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> float32 [...]"""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., n] bytes -> [..., 2n]: the n low nibbles, then the n high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(qh: np.ndarray, count: int) -> np.ndarray:
    """[..., count / 8] bytes as a little-endian bit field -> [..., count] of 0/1."""
    return np.unpackbits(qh, axis=-1, bitorder="little")[..., :count]


def _q8_0(b: np.ndarray):
    return b[..., 2:].view(np.int8).astype(np.int16) + 128, _f16(b[..., :2]), 128, None, 8


def _q4_0(b: np.ndarray):
    return _nibbles(b[..., 2:]), _f16(b[..., :2]), 8, None, 4


def _q4_1(b: np.ndarray):
    return _nibbles(b[..., 4:]), _f16(b[..., :2]), 0, _f16(b[..., 2:4]), 4


def _q5_0(b: np.ndarray):
    return _nibbles(b[..., 6:]) | (_bits(b[..., 2:6], 32) << 4), _f16(b[..., :2]), 16, None, 8


def _q5_1(b: np.ndarray):
    return _nibbles(b[..., 8:]) | (_bits(b[..., 4:8], 32) << 4), _f16(b[..., :2]), 0, _f16(b[..., 2:4]), 8


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins packed in 12 bytes (Q4_K, Q5_K)."""
    s = s.astype(np.uint8)
    low_sc, low_m = s[..., 0:4] & 63, s[..., 4:8] & 63
    high_sc = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    high_m = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return np.concatenate([low_sc, high_sc], -1), np.concatenate([low_m, high_m], -1)


def _k_quads(qs: np.ndarray) -> np.ndarray:
    """[..., 128] bytes -> [..., 256] 4-bit values: per 32-byte chunk, its low nibbles then its high."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 32)
    return np.concatenate([chunks & 0x0F, chunks >> 4], axis=-1).reshape(*qs.shape[:-1], 256)


def _q4_k(b: np.ndarray):
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, m = _k_scales_mins(b[..., 4:16])
    return _k_quads(b[..., 16:144]), d[..., None] * sc, 0, -(dmin[..., None] * m), 4


def _q5_k(b: np.ndarray):
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, m = _k_scales_mins(b[..., 4:16])
    high = _bits(b[..., 16:48], 256 * 8).reshape(*b.shape[:-1], 32, 8)  # [.., l, bit j]: value j*32 + l
    high = np.swapaxes(high, -1, -2).reshape(*b.shape[:-1], 256)
    return _k_quads(b[..., 48:176]) | (high << 4), d[..., None] * sc, 0, -(dmin[..., None] * m), 8


def _q6_k(b: np.ndarray):
    ql, qh = b[..., 0:128], b[..., 128:192]
    sc = b[..., 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[..., 208:210])
    halves = []
    for h in range(2):
        low, high = ql[..., 64 * h: 64 * h + 64], qh[..., 32 * h: 32 * h + 32]
        parts = [(low[..., 0:32] & 0x0F) | ((high & 3) << 4), (low[..., 32:64] & 0x0F) | (((high >> 2) & 3) << 4),
                 (low[..., 0:32] >> 4) | (((high >> 4) & 3) << 4), (low[..., 32:64] >> 4) | (((high >> 6) & 3) << 4)]
        halves.append(np.concatenate(parts, axis=-1))
    return np.concatenate(halves, -1), d[..., None] * sc, 32, None, 8


def _k_crumbs(qs: np.ndarray) -> np.ndarray:
    """[..., 64] bytes -> [..., 256] 2-bit values: per 32-byte half, shift 0, 2, 4, 6 in turn, each
    over the half's 32 bytes (Q2_K, Q3_K)."""
    halves = qs.reshape(*qs.shape[:-1], 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    return ((halves >> shifts) & 3).reshape(*qs.shape[:-1], 256)


def _q2_k(b: np.ndarray):
    sc = b[..., 0:16]
    d, dmin = _f16(b[..., 80:82]), _f16(b[..., 82:84])
    return _k_crumbs(b[..., 16:80]), d[..., None] * (sc & 0x0F), 0, -(dmin[..., None] * (sc >> 4)), 4


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """The 16 six-bit scales packed in 12 bytes: low nibbles of bytes 0-7 then their high nibbles,
    each with two high bits from bytes 8-11 (pair i of byte 8 + j for scale 4 i + j)."""
    low = np.concatenate([s[..., 0:8] & 0x0F, s[..., 0:8] >> 4], -1)
    high = np.concatenate([(s[..., 8:12] >> (2 * i)) & 3 for i in range(4)], -1)
    return (low | (high << 4)).astype(np.float32) - 32


def _q3_k(b: np.ndarray):
    high = _bits(b[..., 0:32], 256).reshape(*b.shape[:-1], 32, 8)  # [.., l, bit j]: value j*32 + l
    high = np.swapaxes(high, -1, -2).reshape(*b.shape[:-1], 256)
    d = _f16(b[..., 108:110])
    return _k_crumbs(b[..., 32:96]) | (high << 2), d[..., None] * _q3_k_scales(b[..., 96:108]), 4, None, 4


# type -> (values per block, zero point's block (the block scales apply to), decoder)
DECODERS = {
    Q.Q8_0: (32, 32, _q8_0), Q.Q4_0: (32, 32, _q4_0), Q.Q4_1: (32, 32, _q4_1), Q.Q5_0: (32, 32, _q5_0),
    Q.Q5_1: (32, 32, _q5_1), Q.Q4_K: (256, 32, _q4_k), Q.Q5_K: (256, 32, _q5_k), Q.Q6_K: (256, 16, _q6_k),
    Q.Q3_K: (256, 16, _q3_k), Q.Q2_K: (256, 16, _q2_k),
}


def decode(raw: np.ndarray, qtype: Q, k: int) -> tuple[Quantized, Scheme]:
    """raw: [rows, bytes per row] of a GGUF tensor of type qtype with k values per row."""
    per_block, block, decoder = DECODERS[qtype]
    rows = raw.shape[0]
    codes, scales, zero, offsets, bits = decoder(raw.reshape(rows, k // per_block, -1))
    nb = k // block
    q = Quantized(np.asarray(codes).astype(np.uint8).reshape(rows, k), np.asarray(scales, np.float32).reshape(rows, nb),
                  np.full((rows, nb), zero, np.uint8),
                  None if offsets is None else np.asarray(offsets, np.float32).reshape(rows, nb))
    return q, Scheme(bits, block, symmetric=offsets is None and zero == 2 ** (bits - 1), offsets=offsets is not None)
