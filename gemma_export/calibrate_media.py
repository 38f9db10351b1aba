"""The built-in calibration media of an encoder's precision (the counterpart of the decoder's
calibration text): synthetic images and clips, prepared as the runtime prepares them from the
manifest's image or audio entry, run through the fp32 encoder graph
(gemma_export/calibrate.py largest()).

No photographs or recordings ship with the exporter, so the inputs span what the preprocessing can
hand an encoder: flat black and white, smooth colour ramps, full-range noise, hard-edged stripes at
an extreme aspect ratio; for audio, a frequency sweep, full-scale noise and silence. Encoders
normalise their input first, so their activations' range is set mostly by the weights, which the
check then sees at work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gemma_runtime.media.processors import audio_arrays, image_arrays


def images() -> list[np.ndarray]:
    """HxWx3 uint8 images."""
    rng = np.random.default_rng(0)
    ramp = np.stack([*np.meshgrid(np.linspace(0, 255, 640), np.linspace(0, 255, 480)), np.full((480, 640), 128.0)], -1)
    stripes = np.zeros((900, 300, 3))
    stripes[(np.arange(900) // 6) % 2 == 1] = 255
    return [np.zeros((224, 224, 3), np.uint8), np.full((224, 224, 3), 255, np.uint8), ramp.astype(np.uint8),
            rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), stripes.astype(np.uint8)]


def clips(sampling_rate: int) -> list[np.ndarray]:
    """Mono float32 clips at the extractor's rate."""
    rng = np.random.default_rng(0)
    t = np.arange(2 * sampling_rate) / sampling_rate
    sweep = 0.9 * np.sin(2 * np.pi * (100 * t + (0.45 * sampling_rate - 100) / 4 * t ** 2))  # 100 Hz to 0.9 Nyquist
    return [sweep.astype(np.float32), rng.uniform(-1, 1, sampling_rate).astype(np.float32),
            np.zeros(sampling_rate // 2, np.float32)]


def encoder_inputs(modality: str, entry: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """One feed per calibration item (each run alone: images differ in size) for the encoder of the
    manifest's image or audio entry."""
    if modality == "image":
        return [image_arrays(entry, [image])[0] for image in images()]
    rate = entry["processing"]["sampling_rate"]
    return [audio_arrays(entry, [clip])[0] for clip in clips(rate)]

