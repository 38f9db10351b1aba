"""Gemma 4's audio front end, torch-free: the feature extractor's settings (Gemma4AudioProcessing),
the log-mel features and their frame mask as transformers' Gemma4AudioFeatureExtractor computes
them for a batch of clips, the number of soft tokens of a clip, and the expansion of each audio
placeholder of a prompt into boa + audio token x that number + eoa, as Gemma4Processor writes it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gemma_runtime.errors import RuntimeInputError

AUDIO_TOKEN_TYPE = 3  # mm_token_type_ids: 0 text, 1 image, 2 video, 3 audio


@dataclasses.dataclass(frozen=True)
class Gemma4AudioProcessing:
    """Gemma4AudioFeatureExtractor's settings (defaults: transformers' defaults, Gemma 4 E2B/E4B's).

    Lengths are in samples. max_samples and pad_to_multiple_of are the extractor's call defaults
    (a batch is padded to its longest clip rounded up to pad_to_multiple_of); transformers
    truncates longer clips silently, we refuse them. audio_seq_length and audio_ms_per_token are
    Gemma4Processor's (its duration-based count, capped at audio_seq_length). Dither is not a
    setting: a checkpoint with dither other than 0 is refused by the reader (it adds noise).
    """

    sampling_rate: int = 16_000
    feature_size: int = 128  # mel bins
    frame_length: int = 320
    hop_length: int = 160
    fft_length: int = 512
    min_frequency: float = 0.0
    max_frequency: float = 8000.0
    preemphasis: float = 0.0
    preemphasis_htk_flavor: bool = True
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-3
    per_bin_mean: tuple[float, ...] | None = None
    per_bin_stddev: tuple[float, ...] | None = None
    max_samples: int = 480_000
    pad_to_multiple_of: int = 128
    audio_seq_length: int = 750
    audio_ms_per_token: int = 40

    def __post_init__(self) -> None:
        for name in ("sampling_rate", "feature_size", "frame_length", "hop_length", "fft_length", "max_samples",
                     "pad_to_multiple_of", "audio_seq_length", "audio_ms_per_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RuntimeInputError(f"audio processing: {name} = {value!r} is not a positive integer")
        for name in ("min_frequency", "max_frequency", "preemphasis", "input_scale_factor", "mel_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RuntimeInputError(f"audio processing: {name} = {value!r} is not a finite number")
        if not isinstance(self.preemphasis_htk_flavor, bool):
            raise RuntimeInputError(f"audio processing: preemphasis_htk_flavor = {self.preemphasis_htk_flavor!r} "
                                    "is not a boolean")
        if self.fft_length < self.frame_length:
            raise RuntimeInputError(f"audio processing: fft_length {self.fft_length} is shorter than frame_length "
                                    f"{self.frame_length}")
        if not 0 <= self.min_frequency < self.max_frequency <= self.sampling_rate / 2:
            raise RuntimeInputError(f"audio processing: mel range {self.min_frequency}..{self.max_frequency} Hz is "
                                    f"not within 0..{self.sampling_rate / 2} Hz")
        if self.mel_floor <= 0 or not 0 <= self.preemphasis < 1:
            raise RuntimeInputError(f"audio processing: mel_floor {self.mel_floor} must be > 0 and preemphasis "
                                    f"{self.preemphasis} in [0, 1)")
        for name in ("per_bin_mean", "per_bin_stddev"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, tuple) or len(value) != self.feature_size or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise RuntimeInputError(f"audio processing: {name} must be {self.feature_size} finite numbers")
        if self.per_bin_stddev is not None and 0 in self.per_bin_stddev:
            raise RuntimeInputError("audio processing: per_bin_stddev holds a zero")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, per-bin statistics as lists."""
        out = dataclasses.asdict(self)
        for name in ("per_bin_mean", "per_bin_stddev"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, raw: Any, where: str = "audio processing") -> Gemma4AudioProcessing:
        """The inverse of to_dict; a missing or unknown field is an error naming it."""
        if not isinstance(raw, dict):
            raise RuntimeInputError(f"{where}: expected a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(names - raw.keys()), sorted(raw.keys() - names)
        if missing or unknown:
            raise RuntimeInputError(f"{where}: missing field(s) {missing}, unknown field(s) {unknown}")
        values = dict(raw)
        for name in ("per_bin_mean", "per_bin_stddev"):
            if isinstance(values[name], list):
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except RuntimeInputError as e:
            raise RuntimeInputError(f"{where}: {e}") from None

    @property
    def pad_left(self) -> int:
        """Zeros put before the clip so that the first frame is centred on its first sample."""
        return self.frame_length // 2

    @property
    def min_samples(self) -> int:
        """The shortest clip with one frame."""
        return self.frame_length + 1 - self.pad_left


def _hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_filters(settings: Gemma4AudioProcessing) -> np.ndarray:
    """The HTK-scale triangular filter bank, unnormalised, float64 [fft_length // 2 + 1, feature_size]."""
    edges_mel = np.linspace(_hertz_to_mel(settings.min_frequency), _hertz_to_mel(settings.max_frequency),
                            settings.feature_size + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    # The bins' frequencies run to sampling_rate // 2 (integer division), as transformers places them.
    bins = np.linspace(0, settings.sampling_rate // 2, settings.fft_length // 2 + 1)[:, None]
    rising = (bins - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
    falling = (edges[None, 2:] - bins) / (edges[2:] - edges[1:-1])[None, :]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters.setflags(write=False)
    return filters


@functools.lru_cache(maxsize=8)
def _window(frame_length: int) -> np.ndarray:
    """The periodic Hann window, float32 as the extractor holds it."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(frame_length) / frame_length)).astype(np.float32)


def valid_frames(num_samples: int, settings: Gemma4AudioProcessing) -> int:
    """Frames of a clip whose whole window (frame_length + 1 samples) lies on its samples: the ones
    its input_features_mask marks, whatever padding a batch adds."""
    last_start = settings.pad_left + num_samples - 1 - settings.frame_length
    return last_start // settings.hop_length + 1 if last_start >= 0 else 0


def _checked_clip(clip: Any, index: int, settings: Gemma4AudioProcessing) -> np.ndarray:
    array = np.asarray(clip)
    where = f"audio clip {index}"
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
        raise RuntimeInputError(f"{where}: expected 1-D float samples (load_audio gives them), got "
                                f"{array.dtype} of shape {array.shape}")
    if len(array) > settings.max_samples:
        raise RuntimeInputError(
            f"{where}: {len(array) / settings.sampling_rate:.2f} s ({len(array)} samples) is longer than the "
            f"encoder takes: at most {settings.max_samples / settings.sampling_rate:.2f} s "
            f"({settings.max_samples} samples at {settings.sampling_rate} Hz)")
    if valid_frames(len(array), settings) == 0:
        need = settings.min_samples
        raise RuntimeInputError(f"{where}: {len(array)} samples is shorter than one frame of the encoder "
                                f"({need} samples, {1000 * need / settings.sampling_rate:.1f} ms)")
    if not np.isfinite(array).all():
        raise RuntimeInputError(f"{where}: the samples hold NaN or infinite values")
    # transformers pads in float32 (float64 input is cast); the spectrogram follows in float32
    return array.astype(np.float32, copy=False)


def features(clips: Sequence[np.ndarray], settings: Gemma4AudioProcessing) -> tuple[np.ndarray, np.ndarray]:
    """input_features float32 [n, frames, feature_size] and input_features_mask bool [n, frames] of
    clips (1-D float samples at settings.sampling_rate), padded as one batch: to the longest clip
    rounded up to pad_to_multiple_of; features of masked frames are 0."""
    arrays = [_checked_clip(clip, i, settings) for i, clip in enumerate(clips)]
    if not arrays:
        raise RuntimeInputError("no audio clips to encode")
    multiple = settings.pad_to_multiple_of
    padded = -(-max(len(a) for a in arrays) // multiple) * multiple
    left = settings.pad_left
    wave = np.zeros((len(arrays), left + padded), dtype=np.float32)
    for row, array in zip(wave, arrays):
        row[left:left + len(array)] = array
    if settings.input_scale_factor != 1.0:
        wave = wave * settings.input_scale_factor
    width, hop = settings.frame_length + 1, settings.hop_length
    count = (wave.shape[1] - width) // hop + 1
    item, step = wave.strides
    frames = np.lib.stride_tricks.as_strided(wave, shape=(len(arrays), count, width), strides=(item, hop * step, step),
                                             writeable=False)
    # Each frame reads frame_length + 1 samples: the extra one feeds the pre-emphasis.
    pre = settings.preemphasis
    if pre > 0.0 and settings.preemphasis_htk_flavor:
        frames = np.concatenate([frames[..., :1] * (1.0 - pre), frames[..., 1:-1] - pre * frames[..., :-2]], axis=-1)
    elif pre > 0.0:
        frames = frames[..., 1:] - pre * frames[..., :-1]
    else:
        frames = frames[..., :-1]
    spectrum = np.abs(np.fft.rfft(frames * _window(settings.frame_length), n=settings.fft_length, axis=-1))
    logmel = np.log(spectrum @ mel_filters(settings) + settings.mel_floor)
    if settings.per_bin_mean is not None:
        logmel = logmel - np.asarray(settings.per_bin_mean, dtype=np.float64)
    if settings.per_bin_stddev is not None:
        logmel = logmel / np.asarray(settings.per_bin_stddev, dtype=np.float64)
    mask = np.arange(count)[None, :] < np.array([valid_frames(len(a), settings) for a in arrays])[:, None]
    return logmel.astype(np.float32) * mask[..., None], mask


def soft_tokens(frames_or_mask: int | np.ndarray) -> int:
    """Audio soft tokens of one clip: its valid frame count, or its input_features_mask row, after
    the encoder's two stride-2 convolutions (kernel 3, padding 1), counted as Gemma4Processor does."""
    if isinstance(frames_or_mask, (int, np.integer)) and not isinstance(frames_or_mask, bool):
        if frames_or_mask < 0:
            raise RuntimeInputError(f"a frame count of {frames_or_mask}")
        mask = np.ones(int(frames_or_mask), dtype=bool)
    else:
        mask = np.asarray(frames_or_mask)
        if mask.ndim != 1:
            raise RuntimeInputError(f"one clip's mask is 1-D, got shape {mask.shape}")
        mask = mask.astype(bool)
    for _ in range(2):
        mask = mask[::2][:(len(mask) - 1) // 2 + 1]
    return int(mask.sum())


def expand_audio_placeholders(ids: Sequence[int], token_counts: Sequence[int], *, audio_token_id: int,
                              boa_token_id: int, eoa_token_id: int) -> tuple[list[int], list[int]]:
    """A prompt's token ids with its i-th audio placeholder (audio_token_id) replaced by boa, the
    audio token x token_counts[i], eoa; and the mm_token_type_ids of the result (3 at the audio
    tokens, 0 elsewhere, boa and eoa included)."""
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in token_counts):
        raise RuntimeInputError(f"audio soft-token counts must be non-negative integers, got {list(token_counts)}")
    placeholders = sum(1 for t in ids if t == audio_token_id)
    if placeholders != len(token_counts):
        raise RuntimeInputError(f"the prompt has {placeholders} audio placeholder(s) but {len(token_counts)} audio "
                                "clip(s) were given: one placeholder per clip")
    out: list[int] = []
    types: list[int] = []
    clips = iter(token_counts)
    for token in ids:
        if token != audio_token_id:
            out.append(int(token))
            types.append(0)
            continue
        count = int(next(clips))
        out += [boa_token_id] + [audio_token_id] * count + [eoa_token_id]
        types += [0] + [AUDIO_TOKEN_TYPE] * count + [0]
    return out, types
