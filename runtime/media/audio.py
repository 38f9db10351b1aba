"""Audio as the runtime takes it (a WAV path, WAV bytes, a (samples, rate) pair or a bare array)
turned into float32 mono samples at an encoder's sampling rate, or a clear error.

Channels are mixed to mono by their mean, as librosa.load (what transformers' processors load
audio with) does; resampling is resample.py's band-limited polyphase filter.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO, Union

import numpy as np

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.media.resample import resample
from gemma_runtime.media.wav import read_wav_header, read_wav_samples

AudioItem = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, tuple[Any, int]]
MAX_ARRAY_CHANNELS = 64


def _length_error(where: str, samples: int, rate: int, max_samples: int, sampling_rate: int) -> RuntimeInputError:
    return RuntimeInputError(
        f"{where}: audio of {samples / rate:.2f} s ({samples} samples at {rate} Hz) is longer than the encoder "
        f"takes: at most {max_samples / sampling_rate:.2f} s ({max_samples} samples at {sampling_rate} Hz)")


def _resampled_length(samples: int, rate: int, sampling_rate: int) -> int:
    return -(-samples * sampling_rate // rate)


def _from_wav(stream: BinaryIO, where: str, sampling_rate: int, max_samples: int | None) -> np.ndarray:
    fmt = read_wav_header(stream, where)
    if fmt.frames == 0:
        raise RuntimeInputError(f"{where}: the WAV holds no samples")
    # Refused from the header, before the samples are read into memory.
    if max_samples is not None and _resampled_length(fmt.frames, fmt.rate, sampling_rate) > max_samples:
        raise _length_error(where, fmt.frames, fmt.rate, max_samples, sampling_rate)
    return _to_rate(read_wav_samples(stream, fmt, where).mean(axis=1), fmt.rate, sampling_rate)


def _from_array(samples: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(samples)
    except (ValueError, TypeError) as e:
        raise RuntimeInputError(f"{where}: not an array of samples ({e})") from None
    if not (np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize <= 8):
        raise RuntimeInputError(f"{where}: samples of dtype {array.dtype} are not supported: pass floats in "
                                "[-1, 1] (integer PCM is ambiguous: divide int16 by 32768)")
    if array.ndim == 2:  # (samples, channels), as soundfile returns them
        if not 1 <= array.shape[1] <= MAX_ARRAY_CHANNELS:
            raise RuntimeInputError(f"{where}: a 2-D array is read as (samples, channels); shape {array.shape} "
                                    "has too many channels (transpose a (channels, samples) array)")
        array = array.mean(axis=1)
    elif array.ndim != 1:
        raise RuntimeInputError(f"{where}: audio must be 1-D samples or 2-D (samples, channels), got shape "
                                f"{array.shape}")
    if not np.isfinite(array).all():
        raise RuntimeInputError(f"{where}: the samples hold NaN or infinite values")
    return array


def _to_rate(mono: np.ndarray, rate: int, sampling_rate: int) -> np.ndarray:
    return resample(mono, rate, sampling_rate) if rate != sampling_rate else mono.astype(np.float32)


def _open_path(item: str | os.PathLike) -> BinaryIO:
    text = os.fspath(item)
    if isinstance(text, str) and text.split(":", 1)[0].lower() in ("http", "https", "ftp", "data"):
        raise RuntimeInputError(f"{text[:60]}: URLs are not fetched: pass a local WAV file, its bytes or samples")
    try:
        return open(text, "rb")
    except OSError as e:
        raise RuntimeInputError(f"{text}: cannot read the audio file ({e.strerror or e})") from None


def load_audio(item: AudioItem, sampling_rate: int, *, max_samples: int | None = None) -> np.ndarray:
    """One audio item as float32 mono samples at `sampling_rate` (Hz).

    item: a path to a WAV file; WAV file bytes; a (samples, rate) pair; or a bare numpy array,
    which means samples already at `sampling_rate`. Arrays hold floats (nominally in [-1, 1]),
    1-D, or 2-D as (samples, channels). max_samples (at `sampling_rate`): longer audio is refused
    naming both lengths; a WAV's length is checked from its header before its samples are read.
    Only WAV is decoded (PCM 8/16/24/32-bit, float 32/64-bit); anything else is refused by name.
    """
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int) or sampling_rate <= 0:
        raise RuntimeInputError(f"sampling rate {sampling_rate!r} is not a positive integer")
    if isinstance(item, (str, os.PathLike)):
        where = str(os.fspath(item))
        with _open_path(item) as stream:
            mono = _from_wav(stream, where, sampling_rate, max_samples)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        mono = _from_wav(io.BytesIO(bytes(item)), "audio bytes", sampling_rate, max_samples)
    elif isinstance(item, tuple):
        if len(item) != 2 or isinstance(item[1], bool) or not isinstance(item[1], (int, np.integer)) \
                or not 0 < int(item[1]) <= 1_536_000:
            raise RuntimeInputError("an audio pair must be (samples, sampling rate in Hz as a positive integer)")
        rate = int(item[1])
        samples = _from_array(item[0], "audio samples")
        if max_samples is not None and _resampled_length(len(samples), rate, sampling_rate) > max_samples:
            raise _length_error("audio samples", len(samples), rate, max_samples, sampling_rate)
        mono = _to_rate(samples, rate, sampling_rate) if len(samples) else samples
    elif isinstance(item, np.ndarray):
        mono = _from_array(item, "audio samples").astype(np.float32)
    else:
        raise RuntimeInputError(f"audio of type {type(item).__name__} is not supported: pass a WAV path, WAV "
                                "bytes, a (samples, rate) pair or a numpy array")
    if len(mono) == 0:
        raise RuntimeInputError("the audio holds no samples")
    if max_samples is not None and len(mono) > max_samples:
        raise _length_error("audio", len(mono), sampling_rate, max_samples, sampling_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)
