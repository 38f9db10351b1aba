"""A checkpoint folder's image processor settings (processor_config.json's "image_processor", as
transformers 5 saves a processor, else the older flat preprocessor_config.json, the order
transformers reads them in) -> the runtime's Gemma3ImageProcessing / Gemma4ImageProcessing, every
field understood or refused by name.

Gemma3Processor passes its own do_convert_rgb (true) and pan-and-scan settings (off, 256, 4, 1.2)
to the image processor at every call, over the image processor's saved values (transformers 5.25);
a folder whose values differ is refused rather than followed or silently dropped: pan-and-scan is
turned on at run time (Gemma3ImageProcessing(do_pan_and_scan=True)), as in transformers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gemma_export.checkpoints.hf_config import Fields
from gemma_export.checkpoints.json_files import read_json
from gemma_export.errors import ConfigError
from gemma_runtime.media.gemma3_images import Gemma3ImageProcessing
from gemma_runtime.media.gemma4_images import Gemma4ImageProcessing

PROCESSOR_FILE, IMAGE_PROCESSOR_FILE = "processor_config.json", "preprocessor_config.json"
_TYPES = {"gemma3": ("Gemma3ImageProcessor", "Gemma3ImageProcessorPil", "Gemma3ImageProcessorFast"),
          "gemma4": ("Gemma4ImageProcessor", "Gemma4ImageProcessorPil"),
          "gemma4_unified": ("Gemma4UnifiedImageProcessor",)}
_PROCESSORS = {"gemma3": "Gemma3Processor", "gemma4": "Gemma4Processor", "gemma4_unified": "Gemma4UnifiedProcessor"}
# Gemma3Processor's images_kwargs: what it hands the image processor at every call.
_GEMMA3_CALL_DEFAULTS = {"do_convert_rgb": True, "do_pan_and_scan": False, "pan_and_scan_min_crop_size": 256,
                         "pan_and_scan_max_num_crops": 4, "pan_and_scan_min_ratio_to_activate": 1.2}
# Fields the fast (torchvision) processors of transformers 4.x save, harmless at these values.
_HARMLESS = {"default_to_square": (None, True), "do_center_crop": (None, False), "crop_size": (None,),
             "do_pad": (None, False), "input_data_format": (None,), "data_format": (None, "channels_first"),
             "return_tensors": (None,), "device": (None,), "disable_grouping": (None, False, True)}


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """What a folder says about its images."""

    settings: Gemma3ImageProcessing | Gemma4ImageProcessing
    image_seq_length: int | None  # Gemma 3's processor: tokens per image (config.json's mm_tokens_per_image)
    where: str  # the file it came from


def load_image_processor(folder: Path, family: str) -> ImageProcessorConfig:
    """The image processor settings of an HF folder of a `family` ("gemma3", "gemma4",
    "gemma4_unified": Gemma 4's settings, which it merges into model patches) model. A
    folder with neither file is an error naming both: a multimodal export needs them."""
    if family not in _TYPES:
        raise ConfigError(f"{folder}: no image processor is known for the {family!r} family")
    processor_path, image_path = folder / PROCESSOR_FILE, folder / IMAGE_PROCESSOR_FILE
    processor = _object(processor_path) if processor_path.is_file() else {}
    raw, where = processor.get("image_processor"), f"{processor_path} image_processor"
    if raw is None:
        if not image_path.is_file():
            raise ConfigError(f"{folder}: neither {PROCESSOR_FILE} (with an image_processor) nor "
                              f"{IMAGE_PROCESSOR_FILE}: exporting the vision encoder needs the checkpoint's image "
                              "processor settings (copy them from the original checkpoint, or export the text "
                              "decoder alone with --text-only)")
        raw, where = _object(image_path), str(image_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    seq_length = _processor_seq_length(processor, str(processor_path), family)
    fields = Fields(raw, where)
    if family == "gemma3":
        settings, flat_seq_length = _gemma3(fields, where)
        seq_length = seq_length if seq_length is not None else flat_seq_length
    else:
        settings = _gemma4(fields, family, where)
    fields.finish()
    return ImageProcessorConfig(settings, seq_length, where)


def _object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _processor_seq_length(processor: dict, where: str, family: str) -> int | None:
    """processor_config.json's image_seq_length (its other fields belong to the tokenizer, the
    audio and video processors, read elsewhere)."""
    if processor.get("processor_class", _PROCESSORS[family]) != _PROCESSORS[family]:
        raise ConfigError(f"{where}: processor_class = {processor['processor_class']!r} is not supported "
                          f"(expected {_PROCESSORS[family]})")
    value = processor.get("image_seq_length")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{where}: image_seq_length = {value!r} is not a token count")
    return value


def _common(f: Fields, family: str, where: str) -> dict[str, Any]:
    """The fields both families share, with transformers' class defaults for the absent ones. A null
    is refused by name: transformers reads it as false or as no value, never as the default."""
    f.expect("image_processor_type", _TYPES[family])
    f.expect("processor_class", (_PROCESSORS[family],))
    f.expect("do_resize", (True,))  # the encoders take only the processor's sizes (null: no resize)
    for name, allowed in _HARMLESS.items():
        f.expect(name, allowed)
    defaults = Gemma3ImageProcessing() if family == "gemma3" else Gemma4ImageProcessing()
    out = {
        "resample": f.take("resample", int, defaults.resample),
        "do_rescale": f.take("do_rescale", bool, defaults.do_rescale),
        "rescale_factor": float(f.take("rescale_factor", (float, int), defaults.rescale_factor)),
        "do_normalize": f.take("do_normalize", bool, defaults.do_normalize),
        "image_mean": _triple(f.take("image_mean", (list, float, int), defaults.image_mean), "image_mean", where),
        "image_std": _triple(f.take("image_std", (list, float, int), defaults.image_std), "image_std", where),
    }
    return out


def _triple(value: Any, name: str, where: str) -> tuple[float, float, float]:
    if isinstance(value, tuple):  # the default
        return value
    values = [value] * 3 if isinstance(value, (int, float)) else value
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: {name} = {value!r} is not three numbers (one per RGB channel)")
    return tuple(float(v) for v in values)


def _gemma3(f: Fields, where: str) -> tuple[Gemma3ImageProcessing, int | None]:
    common = _common(f, "gemma3", where)
    size = f.take("size", dict, {"height": 224, "width": 224})  # the class default (never in a real config)
    if set(size) != {"height", "width"} or size["height"] != size["width"] or not isinstance(size["height"], int):
        raise ConfigError(f"{where}: size = {size!r} is not supported (Gemma 3 takes a square height = width)")
    for name, value in _GEMMA3_CALL_DEFAULTS.items():
        if name in f.raw and f.raw.pop(name) not in (None, value):
            raise ConfigError(f"{where}: {name} is not supported at any value but {value!r} (or null): "
                              f"Gemma3Processor replaces it by {value!r} at every call, so transformers never "
                              "applies the saved value")
    seq_length = f.take("image_seq_length", int, None)  # transformers 4.x wrote the processor's here too
    try:
        return Gemma3ImageProcessing(image_size=size["height"], **common), seq_length
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _gemma4(f: Fields, family: str, where: str) -> Gemma4ImageProcessing:
    common = _common(f, family, where)
    defaults = Gemma4ImageProcessing()
    values = {name: f.take(name, int, getattr(defaults, name))
              for name in ("patch_size", "max_soft_tokens", "pooling_kernel_size")}
    convert_rgb = f.take("do_convert_rgb", bool, defaults.do_convert_rgb)
    try:
        return Gemma4ImageProcessing(**values, **common, do_convert_rgb=convert_rgb)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
