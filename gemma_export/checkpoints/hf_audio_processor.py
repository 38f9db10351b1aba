"""A checkpoint folder's Gemma 4 audio feature-extractor settings (as transformers 5.x's
save_pretrained writes them) -> gemma_runtime's Gemma4AudioProcessing (Gemma 4 Unified's:
Gemma4UnifiedAudioProcessing), every field understood or refused by name.

transformers 5.x writes processor_config.json with the extractor nested under "feature_extractor"
beside the processor's own audio_seq_length and audio_ms_per_token; a lone extractor (and older
layouts) is preprocessor_config.json. AutoProcessor takes the nested section when there is one,
and so do we. The other sections (image_processor, video_processor, ...) are other readers' to
check. transformers writes frame_length, hop_length and fft_length in samples but recomputes them
on loading from frame_length_ms / hop_length_ms (never written: 20 and 10 ms unless a hand-written
file has them); a written value that disagrees with that is refused, not guessed at.
"""

from __future__ import annotations

import math
from pathlib import Path

from gemma_export.checkpoints.hf_config import Fields
from gemma_export.checkpoints.json_files import read_json
from gemma_export.errors import ConfigError
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.media.gemma4_audio import Gemma4AudioProcessing
from gemma_runtime.media.gemma4_unified_audio import Gemma4UnifiedAudioProcessing

PROCESSOR_FILE = "processor_config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
EXTRACTOR_TYPE = "Gemma4AudioFeatureExtractor"
# Gemma4Processor's constructor defaults, which AutoProcessor uses when the file has no value.
AUDIO_SEQ_LENGTH, AUDIO_MS_PER_TOKEN = 750, 40


def _number(f: Fields, name: str, default: float) -> float:
    value = f.take(name, (int, float), default)
    if not math.isfinite(value):
        raise ConfigError(f"{f.where}: field {name!r} = {value!r} is not a finite number")
    return float(value)


def _per_bin(f: Fields, name: str) -> tuple[float, ...] | None:
    value = f.take(name, list, None)
    if value is None:
        return None
    # transformers writes the statistics as it holds them, shaped [1, 1, feature_size]
    while len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{f.where}: field {name!r} must be a list of numbers")
    return tuple(float(v) for v in value)


def _samples(f: Fields, name: str, derived: int, why: str) -> None:
    """A length transformers writes but recomputes on loading: it must equal the recomputed one."""
    value = f.take(name, int, None)
    if value is not None and value != derived:
        raise ConfigError(f"{f.where}: {name} = {value} disagrees with the {derived} that transformers derives "
                          f"from {why} (and uses instead)")


def parse_audio_processing(extractor: dict, processor: dict, where: str) -> Gemma4AudioProcessing:
    """The extractor's section (every field checked) and the processor's audio fields."""
    f = Fields(extractor, where)
    f.expect("feature_extractor_type", (EXTRACTOR_TYPE,))
    f.expect("processor_class", ("Gemma4Processor",))
    f.expect("padding_side", ("right",))
    f.expect("dither", (0, 0.0))  # dither adds random noise to the samples: training only
    # Padded samples never reach an unmasked frame and masked frames are zeroed: no effect.
    _number(f, "padding_value", 0.0)
    # The extractor's call always asks for the mask, whatever this says.
    f.take("return_attention_mask", bool, True)
    rate = f.take("sampling_rate", int, 16_000)
    frame_ms = _number(f, "frame_length_ms", 20.0)
    hop_ms = _number(f, "hop_length_ms", 10.0)
    frame_length = int(round(rate * frame_ms / 1000.0))
    hop_length = int(round(rate * hop_ms / 1000.0))
    if frame_length <= 0 or hop_length <= 0:
        raise ConfigError(f"{where}: frame_length_ms {frame_ms} / hop_length_ms {hop_ms} give an empty frame or hop "
                          f"at {rate} Hz")
    overdrive = f.take("fft_overdrive", bool, False)
    fft_length = 2 ** math.ceil(math.log2(frame_length)) * (2 if overdrive else 1)
    _samples(f, "frame_length", frame_length, f"frame_length_ms {frame_ms:g} at {rate} Hz")
    _samples(f, "hop_length", hop_length, f"hop_length_ms {hop_ms:g} at {rate} Hz")
    _samples(f, "fft_length", fft_length, f"the frame length {frame_length} (fft_overdrive {overdrive})")
    values = dict(
        sampling_rate=rate, feature_size=f.take("feature_size", int, 128), frame_length=frame_length,
        hop_length=hop_length, fft_length=fft_length, min_frequency=_number(f, "min_frequency", 0.0),
        max_frequency=_number(f, "max_frequency", 8000.0), preemphasis=_number(f, "preemphasis", 0.0),
        preemphasis_htk_flavor=f.take("preemphasis_htk_flavor", bool, True),
        input_scale_factor=_number(f, "input_scale_factor", 1.0), mel_floor=_number(f, "mel_floor", 1e-3),
        per_bin_mean=_per_bin(f, "per_bin_mean"), per_bin_stddev=_per_bin(f, "per_bin_stddev"))
    f.finish()
    p = Fields({k: processor[k] for k in ("audio_seq_length", "audio_ms_per_token") if k in processor}, where)
    values["audio_seq_length"] = p.take("audio_seq_length", int, AUDIO_SEQ_LENGTH)
    values["audio_ms_per_token"] = p.take("audio_ms_per_token", int, AUDIO_MS_PER_TOKEN)
    try:
        return Gemma4AudioProcessing(**values)
    except RuntimeInputError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_unified_audio_processing(extractor: dict, processor: dict, where: str) -> Gemma4UnifiedAudioProcessing:
    """Gemma4UnifiedAudioFeatureExtractor's section: raw frames of audio_samples_per_token samples
    (feature_size, the features' width, must say the same). Gemma4UnifiedProcessor counts a clip's
    tokens from its frames alone: its audio_seq_length and audio_ms_per_token are never used."""
    f = Fields(extractor, where)
    f.expect("feature_extractor_type", ("Gemma4UnifiedAudioFeatureExtractor",))
    f.expect("processor_class", ("Gemma4UnifiedProcessor",))
    f.expect("padding_side", ("right",))
    # Padded frames are masked and dropped; the extractor's call always asks for the mask.
    _number(f, "padding_value", 0.0)
    f.take("return_attention_mask", bool, True)
    rate = f.take("sampling_rate", int, 16_000)
    frame = f.take("audio_samples_per_token", int, 640)
    width = f.take("feature_size", int, 640)
    f.finish()
    if width != frame:
        raise ConfigError(f"{where}: feature_size {width} differs from audio_samples_per_token {frame} (each "
                          "feature is one frame of samples)")
    try:
        return Gemma4UnifiedAudioProcessing(sampling_rate=rate, samples_per_token=frame)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


_PARSERS = {"gemma4": parse_audio_processing, "gemma4_unified": parse_unified_audio_processing}


def read_audio_processing(folder: Path, family: str = "gemma4"
                          ) -> Gemma4AudioProcessing | Gemma4UnifiedAudioProcessing | None:
    """The folder's audio front end for a `family` ("gemma4", "gemma4_unified") model, or None when
    it has no feature extractor. Gemma4Processor saves one whether or not the model has an audio
    tower: config.json's audio_config says that."""
    parse = _PARSERS[family]
    folder = Path(folder)
    processor: dict = {}
    if (folder / PROCESSOR_FILE).is_file():
        processor = read_json(folder / PROCESSOR_FILE)
        if not isinstance(processor, dict):
            raise ConfigError(f"{folder / PROCESSOR_FILE}: expected a JSON object")
        section = processor.get("feature_extractor")
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError(f"{folder / PROCESSOR_FILE}: feature_extractor is not a JSON object")
            return parse(section, processor, f"{folder / PROCESSOR_FILE}: feature_extractor")
    if (folder / PREPROCESSOR_FILE).is_file():
        extractor = read_json(folder / PREPROCESSOR_FILE)
        if not isinstance(extractor, dict):
            raise ConfigError(f"{folder / PREPROCESSOR_FILE}: expected a JSON object")
        if "feature_extractor_type" in extractor:
            return parse(extractor, processor, str(folder / PREPROCESSOR_FILE))
    return None
