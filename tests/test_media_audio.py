"""Audio in the runtime: WAV decoding, resampling, Gemma 4's log-mel features and soft-token
expansion against transformers' Gemma4AudioFeatureExtractor and Gemma4Processor, the checkpoint
reader of the extractor's settings, and each kind of bad input refused with a clear error."""

from __future__ import annotations

import io
import json
import struct
import wave

import numpy as np
import pytest

from gemma_export.checkpoints.hf_audio_processor import read_audio_processing
from gemma_export.errors import ConfigError
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.media.audio import load_audio
from gemma_runtime.media.gemma4_audio import (Gemma4AudioProcessing, expand_audio_placeholders, features,
                                              soft_tokens, valid_frames)
from gemma_runtime.media.resample import resample

RATE = 16_000
# 161 samples: the shortest clip with one frame; the others cross frame and 128-sample boundaries.
CLIP_LENGTHS = (161, 5000, 12345, 16000)


def pcm_wav(ints: np.ndarray, rate: int, width: int) -> bytes:
    """A PCM WAV written by the standard library: ints [frames, channels] of `width` bytes."""
    ints = np.asarray(ints)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(ints.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 1:
            raw = (ints + 128).astype(np.uint8).tobytes()
        elif width == 3:
            raw = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        else:
            raw = ints.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
        w.writeframes(raw)
    return buffer.getvalue()


def riff(fmt: bytes, data: bytes, *, declared: int | None = None, extra: bytes = b"") -> bytes:
    """A WAV assembled by hand: a fmt chunk body, optional chunks before the data, the data chunk."""
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def float_fmt(channels: int, rate: int, *, extensible: bool = False, bits: int = 32, code: int = 3) -> bytes:
    align = channels * bits // 8
    if not extensible:
        return struct.pack("<HHIIHH", code, channels, rate, rate * align, align, bits)
    guid = struct.pack("<H", code) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * align, align, bits, 22, bits, 0) + guid


def sine(rate: int, seconds: float, hz: float, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate + 0.3)


# --- decoding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wav_of_each_width_decodes_exactly_and_mixes_stereo_by_mean(width):
    full = 2 ** (8 * width - 1)
    ints = np.random.default_rng(width).integers(-full, full, size=(300, 2))
    got = load_audio(pcm_wav(ints, RATE, width), RATE)
    expected = (ints.astype(np.float64) / full).mean(axis=1)
    assert got.dtype == np.float32 and got.shape == (300,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-7)


def test_float_wav_plain_and_extensible_and_extensible_pcm():
    samples = np.random.default_rng(0).uniform(-1, 1, size=(200, 1)).astype("<f4")
    for extensible in (False, True):
        data = riff(float_fmt(1, RATE, extensible=extensible), samples.tobytes())
        np.testing.assert_array_equal(load_audio(data, RATE), samples[:, 0])
    ints = np.arange(-100, 100, dtype="<i2")
    data = riff(float_fmt(1, RATE, extensible=True, bits=16, code=1), ints.tobytes(),
                extra=b"LIST" + struct.pack("<I", 3) + b"abc\x00")  # an odd-sized chunk and its pad byte
    np.testing.assert_array_equal(load_audio(data, RATE), ints / 32768.0)


def test_path_pair_and_bare_array(tmp_path):
    ints = np.arange(-500, 500).reshape(-1, 1)
    path = tmp_path / "clip.wav"
    path.write_bytes(pcm_wav(ints, RATE, 2))
    np.testing.assert_array_equal(load_audio(path, RATE), ints[:, 0] / 32768.0)
    np.testing.assert_array_equal(load_audio(str(path), RATE), ints[:, 0] / 32768.0)
    samples = np.linspace(-1, 1, 400)
    # a bare array is samples already at the rate asked for: returned as they are, in float32
    np.testing.assert_array_equal(load_audio(samples, RATE), samples.astype(np.float32))
    np.testing.assert_array_equal(load_audio((samples, RATE), RATE), samples.astype(np.float32))
    stereo = np.stack([samples, -samples * 0.5], axis=1)  # (samples, channels)
    np.testing.assert_allclose(load_audio((stereo, RATE), RATE), samples * 0.25, atol=1e-7)


@pytest.mark.parametrize("rate", [44_100, 48_000, 8_000, 22_050])
def test_resampled_sine_keeps_its_frequency_and_amplitude(rate):
    """A 1 kHz sine of amplitude 0.5, 1 s, resampled to 16 kHz and fitted (sin and cos at exactly
    1 kHz, 0.1 s trimmed at each end): amplitude within 1e-5 relative and the fit's residual
    below 1e-5 (measured: at most 2.1e-6 relative, from 8 kHz, and 8e-7). A frequency off by even 1e-3 Hz would leave a
    residual over 1e-3, so the residual bounds the frequency too."""
    out = load_audio((sine(rate, 1.0, 1000.0), rate), RATE)
    assert len(out) == RATE
    n = np.arange(len(out))[1600:-1600]
    basis = np.stack([np.sin(2 * np.pi * 1000 * n / RATE), np.cos(2 * np.pi * 1000 * n / RATE)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, out[1600:-1600].astype(np.float64), rcond=None)
    assert abs(np.hypot(*coef) - 0.5) / 0.5 < 1e-5
    assert np.abs(out[1600:-1600] - basis @ coef).max() < 1e-5


@pytest.mark.parametrize("rate,hz", [(44_100, 12_000.0), (48_000, 8_500.0)])
def test_resampling_keeps_out_what_would_alias(rate, hz):
    """Tones above the new Nyquist frequency (8 kHz) are removed, not folded into the band:
    below -90 dB (measured: -123 dB and -109 dB). 7.2 kHz, 90% of it, passes within 0.01 dB."""
    out = resample(sine(rate, 0.5, hz, amplitude=1.0), rate, RATE)[800:-800].astype(np.float64)
    assert 20 * np.log10(np.sqrt(2 * np.mean(out ** 2))) < -90
    passed = resample(sine(rate, 0.5, 7200.0, amplitude=1.0), rate, RATE)[800:-800].astype(np.float64)
    assert abs(20 * np.log10(np.sqrt(2 * np.mean(passed ** 2)))) < 0.01


def test_both_forms_of_the_resampler_agree(monkeypatch):
    """The block form (common rates) and the per-phase form (large coprime rates) compute the
    same filter: forced onto the per-phase form, 44.1 kHz -> 16 kHz agrees within 1e-6."""
    import gemma_runtime.media.resample as module
    x = np.random.default_rng(5).uniform(-1, 1, 22_050)
    blocks = resample(x, 44_100, RATE)
    monkeypatch.setattr(module, "BLOCK_WEIGHTS", 0)
    np.testing.assert_allclose(resample(x, 44_100, RATE), blocks, rtol=0, atol=1e-6)


# --- features against transformers -------------------------------------------------------------

def reference_extractor(**kwargs):
    from transformers import Gemma4AudioFeatureExtractor
    return Gemma4AudioFeatureExtractor(**kwargs)


def clips(lengths=CLIP_LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def assert_features_equal(ours, reference):
    features_, mask = ours
    assert features_.dtype == np.float32 and mask.dtype == np.bool_
    assert features_.shape == reference["input_features"].shape
    np.testing.assert_array_equal(mask, reference["input_features_mask"])
    np.testing.assert_allclose(features_, reference["input_features"], rtol=1e-4, atol=1e-5)


def test_features_equal_transformers_for_a_batch_and_each_clip_alone():
    """The four clips as one batch (padded to the longest, 16000, a multiple of 128) and each alone
    (161 samples pads to 256): shapes, masks and features equal (measured: bit-identical)."""
    extractor, settings = reference_extractor(), Gemma4AudioProcessing()
    batch = clips()
    assert_features_equal(features(batch, settings), extractor(batch, return_tensors="np"))
    for clip in batch:
        ours = features([clip], settings)
        assert_features_equal(ours, extractor([clip], return_tensors="np"))
        assert ours[1].sum() == valid_frames(len(clip), settings)


@pytest.mark.parametrize("htk", [True, False])
def test_features_with_every_setting_changed_equal_transformers(htk):
    rng = np.random.default_rng(1)
    mean, std = rng.standard_normal(64), rng.uniform(0.5, 2.0, 64)
    changed = dict(feature_size=64, min_frequency=60.0, max_frequency=7600.0, preemphasis=0.97,
                   preemphasis_htk_flavor=htk, fft_overdrive=True, input_scale_factor=2.5, mel_floor=1e-5,
                   frame_length_ms=25.0, hop_length_ms=12.5)
    extractor = reference_extractor(**changed, per_bin_mean=list(mean), per_bin_stddev=list(std))
    settings = Gemma4AudioProcessing(feature_size=64, min_frequency=60.0, max_frequency=7600.0, preemphasis=0.97,
                                     preemphasis_htk_flavor=htk, fft_length=1024, input_scale_factor=2.5,
                                     mel_floor=1e-5, frame_length=400, hop_length=200,
                                     per_bin_mean=tuple(mean), per_bin_stddev=tuple(std))
    batch = clips((3000, 9999), seed=2)
    assert_features_equal(features(batch, settings), extractor(batch, return_tensors="np"))


def test_float64_input_is_taken_as_transformers_takes_it():
    batch = [clip.astype(np.float64) for clip in clips((4000,))]
    assert_features_equal(features(batch, Gemma4AudioProcessing()), reference_extractor()(batch, return_tensors="np"))


# --- soft tokens and placeholders against Gemma4Processor --------------------------------------

SPECIALS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
            "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}


@pytest.fixture(scope="module")
def processor():
    """Gemma4Processor built from its parts. No Gemma 4 tokenizer is available offline: the
    tokenizer is a word-level one holding Gemma 4's special-token strings, so the ids differ from
    Gemma 4's but the processor's own expansion and mm_token_type_ids code runs unchanged. The
    video processor needs torchvision, which is not installed; the processor's class check is
    skipped for it (audio never reaches it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma4Processor, PreTrainedTokenizerFast
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    words = ["<pad>", "<eos>", "<bos>", "<unk>", *SPECIALS.values(), "describe", "this", "and", "compare", "."]
    model = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>", extra_special_tokens=SPECIALS)

    class NoVideoProcessor(Gemma4Processor):
        def check_argument_for_proper_class(self, name, argument):
            return None if name == "video_processor" else super().check_argument_for_proper_class(name, argument)

    return NoVideoProcessor(feature_extractor=reference_extractor(), image_processor=Gemma4ImageProcessorPil(),
                            tokenizer=tokenizer, video_processor=None)


@pytest.mark.parametrize("prompt,lengths", [("describe <|audio|> .", (12345,)),
                                            ("compare <|audio|> and <|audio|> .", (16000, 5000))])
def test_expanded_ids_and_token_types_equal_the_processor(processor, prompt, lengths):
    batch = clips(lengths, seed=3)
    reference = processor(text=[prompt], audio=batch, return_tensors="np")
    settings = Gemma4AudioProcessing()
    features_, mask = features(batch, settings)
    assert_features_equal((features_, mask), reference)
    counts = [soft_tokens(row) for row in mask]
    # the count from the mask, from the valid frames, and the processor's duration-based count
    assert counts == [soft_tokens(valid_frames(n, settings)) for n in lengths]
    assert counts == [processor._compute_audio_num_tokens(np.zeros(n), RATE) for n in lengths]
    tok = processor.tokenizer
    ids, types = expand_audio_placeholders(
        tok(prompt)["input_ids"], counts, audio_token_id=tok.audio_token_id,
        boa_token_id=tok.convert_tokens_to_ids("<|audio>"), eoa_token_id=tok.convert_tokens_to_ids("<audio|>"))
    assert ids == reference["input_ids"][0].tolist()
    assert types == reference["mm_token_type_ids"][0].tolist()
    assert types.count(3) == sum(counts)


def test_a_30_second_clip_gives_750_soft_tokens():
    settings = Gemma4AudioProcessing()
    assert valid_frames(settings.max_samples, settings) == 2999
    assert soft_tokens(valid_frames(settings.max_samples, settings)) == settings.audio_seq_length == 750


# --- reading a checkpoint's settings --------------------------------------------------------------

def test_reader_reads_what_transformers_saves(tmp_path, processor):
    """preprocessor_config.json (a lone extractor's save_pretrained) and processor_config.json
    (Gemma4Processor's to_json_string, which save_pretrained writes), both as transformers wrote them."""
    changed = dict(feature_size=64, preemphasis=0.5, per_bin_mean=[0.5] * 64, per_bin_stddev=[2.0] * 64,
                   mel_floor=1e-4, max_frequency=7000.0)
    reference_extractor(**changed).save_pretrained(tmp_path / "fe")
    settings = read_audio_processing(tmp_path / "fe")
    assert settings == Gemma4AudioProcessing(feature_size=64, preemphasis=0.5, per_bin_mean=(0.5,) * 64,
                                             per_bin_stddev=(2.0,) * 64, mel_floor=1e-4, max_frequency=7000.0)
    from transformers import Gemma4AudioFeatureExtractor
    loaded = Gemma4AudioFeatureExtractor.from_pretrained(tmp_path / "fe")
    batch = clips((7000, 2000), seed=4)
    assert_features_equal(features(batch, settings), loaded(batch, return_tensors="np"))

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "processor_config.json").write_text(processor.to_json_string())
    assert read_audio_processing(tmp_path / "proc") == Gemma4AudioProcessing()
    assert Gemma4AudioProcessing.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def write_extractor(folder, **changes):
    raw = reference_extractor().to_dict()
    raw["mel_floor"] = float(raw["mel_floor"])
    raw.update(changes)
    folder.mkdir(exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(raw))
    return folder


@pytest.mark.parametrize("changes,named", [
    ({"dither": 0.1}, "dither"),
    ({"padding_side": "left"}, "padding_side"),
    ({"feature_extractor_type": "WhisperFeatureExtractor"}, "feature_extractor_type"),
    ({"frame_length": 400}, "frame_length"),
    ({"fft_length": 1024}, "fft_length"),
    ({"mel_floor": "small"}, "mel_floor"),
    ({"feature_size": True}, "feature_size"),
    ({"window_type": "hamming"}, "window_type"),
    ({"per_bin_mean": [0.0] * 3}, "per_bin_mean"),
    ({"max_frequency": 9000.0}, "mel range"),
])
def test_reader_refuses_by_name(tmp_path, changes, named):
    with pytest.raises(ConfigError, match=named):
        read_audio_processing(write_extractor(tmp_path / "ckpt", **changes))


def test_reader_without_an_extractor_and_the_processor_fields(tmp_path):
    assert read_audio_processing(tmp_path) is None
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Gemma3ImageProcessor"}))
    assert read_audio_processing(tmp_path) is None
    section = reference_extractor().to_dict()
    section["mel_floor"] = float(section["mel_floor"])
    (tmp_path / "processor_config.json").write_text(json.dumps(
        {"feature_extractor": section, "audio_seq_length": 188, "image_processor": {"anything": 1}}))
    assert read_audio_processing(tmp_path).audio_seq_length == 188
    (tmp_path / "processor_config.json").write_text(json.dumps({"feature_extractor": section,
                                                                "audio_seq_length": "long"}))
    with pytest.raises(ConfigError, match="audio_seq_length"):
        read_audio_processing(tmp_path)


def test_settings_from_dict_is_strict():
    raw = Gemma4AudioProcessing().to_dict()
    with pytest.raises(RuntimeInputError, match="dither"):
        Gemma4AudioProcessing.from_dict({**raw, "dither": 0.0})
    del raw["hop_length"]
    with pytest.raises(RuntimeInputError, match="hop_length"):
        Gemma4AudioProcessing.from_dict(raw)
    with pytest.raises(RuntimeInputError, match="fft_length"):
        Gemma4AudioProcessing(fft_length=256)


# --- bad input ------------------------------------------------------------------------------------

GOOD_WAV = pcm_wav(np.zeros((1000, 1), dtype=int), RATE, 2)


@pytest.mark.parametrize("data,message", [
    (GOOD_WAV[:-501], "truncated WAV"),
    (GOOD_WAV[:30], "truncated"),
    (np.random.default_rng(0).bytes(2000), "not a WAV file.*only WAV is supported"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(500), "MP3.*only WAV is supported"),
    (b"\xff\xfb\x90\x64" + bytes(500), "MP3.*only WAV is supported"),
    (b"fLaC" + bytes(100), "FLAC.*only WAV is supported"),
    (riff(float_fmt(1, RATE, bits=16, code=0x55), bytes(400)), "MPEG Layer 3.*only uncompressed"),
    (riff(float_fmt(1, RATE, bits=8, code=3), bytes(400)), "8-bit float"),
    (riff(float_fmt(1, RATE), bytes(40), declared=2_000_000_000), "declares 2000000000 bytes, 40 present"),
    (riff(float_fmt(1, RATE), bytes(6)), "whole number"),
    (riff(float_fmt(1, RATE), np.array([0.5, np.nan], "<f4").tobytes()), "NaN"),
    (riff(float_fmt(1, RATE), b""), "no samples"),
    (b"", "empty"),
])
def test_bad_wav_is_a_clear_error(data, message):
    with pytest.raises(RuntimeInputError, match=message):
        load_audio(data, RATE)


def test_too_long_audio_names_both_lengths_before_decoding():
    # NaN samples: decoding them would be a different error, so the length is checked first
    long_wav = riff(float_fmt(1, 8000), np.full(8000 * 31, np.nan, "<f4").tobytes())
    with pytest.raises(RuntimeInputError, match=r"31.00 s \(248000 samples at 8000 Hz\).*30.00 s \(480000 samples"):
        load_audio(long_wav, RATE, max_samples=480_000)
    with pytest.raises(RuntimeInputError, match=r"2.00 s.*at most 1.00 s"):
        load_audio(np.zeros(32_000), RATE, max_samples=16_000)
    with pytest.raises(RuntimeInputError, match=r"2.00 s.*at most 1.00 s"):
        load_audio((np.zeros(88_200), 44_100), RATE, max_samples=16_000)
    assert len(load_audio(np.zeros(16_000), RATE, max_samples=16_000)) == 16_000


@pytest.mark.parametrize("item,message", [
    (np.zeros(0), "no samples"),
    ((np.zeros(0, dtype=np.float32), 44_100), "no samples"),
    (np.array([0.1, np.inf]), "NaN or infinite"),
    (np.zeros(100, dtype=np.int16), "dtype int16"),
    (np.zeros((2, 1000)), r"shape \(2, 1000\)"),
    ((np.zeros(10), 0), "sampling rate"),
    ("https://example.com/a.wav", "URLs are not fetched"),
    ("/nonexistent/clip.wav", "cannot read"),
    (12, "type int"),
])
def test_bad_audio_items_are_clear_errors(item, message):
    with pytest.raises(RuntimeInputError, match=message):
        load_audio(item, RATE)


def test_bad_clips_and_prompts_are_clear_errors():
    settings = Gemma4AudioProcessing()
    with pytest.raises(RuntimeInputError, match="30.00 s"):
        features([np.zeros(480_001, np.float32)], settings)
    with pytest.raises(RuntimeInputError, match=r"shorter than one frame of the encoder \(161 samples"):
        features([np.zeros(160, np.float32)], settings)
    with pytest.raises(RuntimeInputError, match="1-D float"):
        features([np.zeros((2, 500), np.float32)], settings)
    with pytest.raises(RuntimeInputError, match="no audio clips"):
        features([], settings)
    with pytest.raises(RuntimeInputError, match="2 audio placeholder.*1 audio clip"):
        expand_audio_placeholders([5, 9, 9], [3], audio_token_id=9, boa_token_id=7, eoa_token_id=8)
