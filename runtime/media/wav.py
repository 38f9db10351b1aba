"""WAV files decoded with the standard library alone: uncompressed PCM (8, 16, 24, 32-bit) and IEEE
float (32, 64-bit), plain or WAVE_FORMAT_EXTENSIBLE, read as untrusted input.

The RIFF chunks are walked here rather than by the `wave` module: on Python 3.11 `wave` reads
neither float nor extensible files, and it returns a short read for a truncated data chunk where
we want an error. Every length is checked against the bytes present before anything is read.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable

import numpy as np

from gemma_runtime.errors import RuntimeInputError

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# The tail every KSDATAFORMAT_SUBTYPE GUID shares after its 2-byte format code.
_SUBTYPE_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_CODECS = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM", 0x0031: "GSM 6.10",
           0x0050: "MPEG", 0x0055: "MPEG Layer 3 (MP3)", 0x00FF: "AAC", 0x1610: "AAC", 0xF1AC: "FLAC"}
_OTHER_FORMATS = ((b"ID3", "MP3"), (b"\xff\xfb", "MP3"), (b"\xff\xf3", "MP3"), (b"\xff\xf2", "MP3"),
                  (b"fLaC", "FLAC"), (b"OggS", "Ogg"), (b"RF64", "RF64 (WAV over 4 GiB)"),
                  (b"FORM", "AIFF"), (b"\x1aE\xdf\xa3", "WebM/Matroska"))
MAX_CHANNELS = 64
MAX_RATE = 1_536_000


@dataclass(frozen=True)
class WavFormat:
    """What a WAV file's fmt and data chunks declare."""

    channels: int
    rate: int
    bits: int
    is_float: bool
    frames: int  # sample frames (one sample per channel) in the data chunk


def _read_exact(stream: BinaryIO, size: int, what: str, where: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise RuntimeInputError(f"{where}: truncated WAV ({what} declares {size} bytes, {len(data)} present)")
    return data


def _other_format(head: bytes) -> str | None:
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    return None


def _parse_fmt(body: bytes, where: str) -> tuple[int, int, int, int, int]:
    if len(body) < 16:
        raise RuntimeInputError(f"{where}: corrupt WAV (fmt chunk of {len(body)} bytes, at least 16 expected)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise RuntimeInputError(f"{where}: corrupt WAV (extensible fmt chunk of {len(body)} bytes, 40 expected)")
        if body[26:40] != _SUBTYPE_TAIL:
            raise RuntimeInputError(f"{where}: WAV sub-format {body[24:40].hex()} is not supported: only "
                                    "uncompressed PCM or float WAV is supported")
        tag = struct.unpack("<H", body[24:26])[0]
    return tag, channels, rate, block_align, bits


def read_wav_header(stream: BinaryIO, where: str) -> WavFormat:
    """Reads up to the start of the samples (left as the stream's position): the format, checked,
    and the frame count, checked against the bytes present when the stream can tell."""
    head = stream.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        other = _other_format(head)
        if other:
            raise RuntimeInputError(f"{where}: this is {other} audio: only WAV is supported")
        if len(head) == 0:
            raise RuntimeInputError(f"{where}: empty file: only WAV audio is supported")
        raise RuntimeInputError(f"{where}: not a WAV file (no RIFF/WAVE header): only WAV is supported")
    fmt = None
    while True:
        chunk = stream.read(8)
        if len(chunk) < 8:
            missing = "fmt" if fmt is None else "data"
            raise RuntimeInputError(f"{where}: truncated or corrupt WAV (no {missing} chunk)")
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            if size > 4096:
                raise RuntimeInputError(f"{where}: corrupt WAV (fmt chunk of {size} bytes)")
            fmt = _parse_fmt(_read_exact(stream, size + (size & 1), "the fmt chunk", where)[:size], where)
        elif cid == b"data":
            if fmt is None:
                raise RuntimeInputError(f"{where}: corrupt WAV (data chunk before the fmt chunk)")
            return _checked_format(fmt, size, stream, where)
        else:
            _skip(stream, size + (size & 1), cid, where)


def _skip(stream: BinaryIO, size: int, cid: bytes, where: str) -> None:
    start = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    if end - start < size:
        raise RuntimeInputError(f"{where}: truncated WAV (chunk {cid!r} declares {size} bytes, "
                                f"{end - start} present)")
    stream.seek(start + size)


def _checked_format(fmt: tuple[int, int, int, int, int], size: int, stream: BinaryIO, where: str) -> WavFormat:
    tag, channels, rate, block_align, bits = fmt
    if tag not in (_PCM, _FLOAT):
        codec = _CODECS.get(tag, "a compressed codec")
        raise RuntimeInputError(f"{where}: WAV codec 0x{tag:04x} ({codec}) is not supported: only uncompressed "
                                "PCM or float WAV is supported")
    supported = (32, 64) if tag == _FLOAT else (8, 16, 24, 32)
    if bits not in supported:
        kind = "float" if tag == _FLOAT else "PCM"
        raise RuntimeInputError(f"{where}: {bits}-bit {kind} WAV is not supported (supported: {supported} bits)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise RuntimeInputError(f"{where}: corrupt WAV ({channels} channels)")
    if not 1 <= rate <= MAX_RATE:
        raise RuntimeInputError(f"{where}: corrupt WAV (sampling rate {rate} Hz)")
    frame_bytes = channels * bits // 8
    if block_align != frame_bytes:
        raise RuntimeInputError(f"{where}: corrupt WAV (block align {block_align}, {frame_bytes} expected "
                                f"for {channels} channel(s) of {bits} bits)")
    if size % frame_bytes:
        raise RuntimeInputError(f"{where}: corrupt or truncated WAV (data chunk of {size} bytes is not a whole "
                                f"number of {frame_bytes}-byte frames)")
    start = stream.tell()
    present = stream.seek(0, io.SEEK_END) - start
    stream.seek(start)
    if present < size:
        raise RuntimeInputError(f"{where}: truncated WAV (data chunk declares {size} bytes, {present} present)")
    return WavFormat(channels, rate, bits, tag == _FLOAT, size // frame_bytes)


def _int24(raw: bytes) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    return np.where(value >= 1 << 23, value - (1 << 24), value)


_DECODERS: dict[tuple[int, bool], Callable[[bytes], np.ndarray]] = {
    (8, False): lambda raw: (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0,
    (16, False): lambda raw: np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0,
    (24, False): lambda raw: _int24(raw).astype(np.float32) / 8388608.0,
    (32, False): lambda raw: (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32),
    (32, True): lambda raw: np.frombuffer(raw, "<f4").astype(np.float32),
    (64, True): lambda raw: np.frombuffer(raw, "<f8").astype(np.float32),
}


def read_wav_samples(stream: BinaryIO, fmt: WavFormat, where: str) -> np.ndarray:
    """The samples after read_wav_header: float32 [frames, channels], integers scaled to [-1, 1)."""
    raw = _read_exact(stream, fmt.frames * fmt.channels * fmt.bits // 8, "the data chunk", where)
    samples = _DECODERS[(fmt.bits, fmt.is_float)](raw).reshape(fmt.frames, fmt.channels)
    if fmt.is_float and not np.isfinite(samples).all():
        raise RuntimeInputError(f"{where}: the WAV holds NaN or infinite samples")
    return samples
