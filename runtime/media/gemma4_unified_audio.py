"""Gemma 4 Unified's audio front end, torch-free: no spectrogram, each soft token is a frame of raw
samples. The clips are cut into frames as transformers' Gemma4UnifiedAudioFeatureExtractor cuts
them (each clip zero-padded to whole frames, a batch padded to its longest clip, the mask true over
each clip's own frames); a clip's soft-token count is its frame count, ceil(samples / frame), as
Gemma4UnifiedProcessor counts them. The placeholder expansion is Gemma 4's
(gemma4_audio.expand_audio_placeholders).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.media.settings import as_dict, check_types, from_dict


@dataclasses.dataclass(frozen=True)
class Gemma4UnifiedAudioProcessing:
    """The extractor's settings (defaults: transformers' Gemma4UnifiedAudioFeatureExtractor's)."""

    sampling_rate: int = 16_000
    samples_per_token: int = 640  # audio_samples_per_token: one frame, one soft token (40 ms at 16 kHz)

    def __post_init__(self) -> None:
        check_types(self)
        if self.sampling_rate <= 0 or self.samples_per_token <= 0:
            raise ValueError(f"sampling_rate {self.sampling_rate} and samples_per_token {self.samples_per_token} "
                             "must be positive")

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gemma4UnifiedAudioProcessing:
        """The inverse of to_dict (a manifest's copy); an unknown key is an error naming it."""
        return from_dict(cls, data, "Gemma 4 Unified audio processing")


def soft_tokens(samples: int, settings: Gemma4UnifiedAudioProcessing) -> int:
    """A clip's soft tokens: its whole and partial frames."""
    return -(-samples // settings.samples_per_token)


def frames(clips: Sequence[np.ndarray], settings: Gemma4UnifiedAudioProcessing) -> tuple[np.ndarray, np.ndarray]:
    """input_features float32 [n, frames, samples_per_token] and input_features_mask bool [n,
    frames] of clips (1-D float samples at settings.sampling_rate), padded with zeros as one batch."""
    if not clips:
        raise RuntimeInputError("no audio clips to encode")
    arrays = []
    for i, clip in enumerate(clips):
        array = np.asarray(clip)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating) or not len(array):
            raise RuntimeInputError(f"audio clip {i}: expected 1-D float samples, at least one (load_audio gives "
                                    f"them), got {array.dtype} of shape {array.shape}")
        if not np.isfinite(array).all():
            raise RuntimeInputError(f"audio clip {i}: the samples hold NaN or infinite values")
        arrays.append(array.astype(np.float32, copy=False))
    counts = [soft_tokens(len(a), settings) for a in arrays]
    width = settings.samples_per_token
    features = np.zeros((len(arrays), max(counts) * width), np.float32)
    for row, array in zip(features, arrays):
        row[:len(array)] = array
    mask = np.arange(max(counts))[None, :] < np.asarray(counts)[:, None]
    return features.reshape(len(arrays), max(counts), width), mask
