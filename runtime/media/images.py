"""Images decoded safely into 8-bit RGB Pillow images: from a path, bytes, a Pillow image or a numpy
array, with a pixel limit checked before decoding and every decoding failure one clear error.

What each input becomes (as transformers' processors treat it, so that the arrays match):
- a path or bytes: decoded (PNG, JPEG, GIF, BMP, WebP, TIFF; the first frame), turned upright by
  its EXIF orientation as transformers' `load_image` does for files, then converted to RGB;
- a Pillow image: converted to RGB as it is (no EXIF rotation, as the processors do);
- RGB conversion composites transparency (an alpha band or a palette's transparent colour) onto
  white, as the processors' `convert_to_rgb`; other modes (L, 1, P, CMYK, YCbCr, ...) go through
  Pillow's convert("RGB"). 16-bit and 32-bit modes (I;16, I, F) are refused: Pillow's conversion
  clips them to 255, which would hand the model a white image;
- a numpy array: [height, width] or [height, width, channels] with 1, 3 or 4 channels (4: RGBA,
  composited onto white), dtype uint8 (0-255), or float32/float64 in [0, 1] (scaled by 255 and
  rounded to uint8 first). transformers' processors rescale a float array again after resizing, so
  only uint8 arrays give transformers' numbers.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from gemma_runtime.errors import RuntimeInputError

# Our own bound, checked on the size a file declares before any pixel is decoded (Pillow's global
# MAX_IMAGE_PIXELS, about 89 Mpixel, only warns below twice that).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
READABLE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG opens phones' MPO files too
_UNCONVERTIBLE_MODES = ("I", "F")  # with the I;16 family, matched by prefix
_MAX_BYTES_SHOWN = 16

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


def load_image(item: ImageInput, where: str = "image", *, convert_rgb: bool = True) -> Image.Image:
    """An 8-bit RGB Pillow image from a path, bytes, a Pillow image or an array (see the module).

    convert_rgb=False (a processor config's do_convert_rgb false) refuses anything not already
    RGB instead of converting it."""
    if isinstance(item, Image.Image):
        _check_size(item.size, where)
        image = _loaded(item, where)  # an image the caller opened may not be decoded yet
    elif isinstance(item, np.ndarray):
        image = _from_array(item, where)
    elif isinstance(item, (str, os.PathLike)):
        image = _decode(_read_file(Path(item), where), where)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        image = _decode(bytes(item), where)
    else:
        raise RuntimeInputError(f"{where}: expected a path, bytes, a PIL image or a numpy array, "
                                f"got {type(item).__name__}")
    _check_size(image.size, where)
    if image.mode == "RGB":
        return image
    if not convert_rgb:
        raise RuntimeInputError(f"{where}: a {image.mode} image, and the processor config's do_convert_rgb is "
                                "false (only RGB images are taken as they are)")
    return _to_rgb(image, where)


def _read_file(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RuntimeInputError(f"{where}: no such file: {path}") from None
    except OSError as e:
        raise RuntimeInputError(f"{where}: cannot read {path} ({e.strerror or e})") from None


def _decode(data: bytes, where: str) -> Image.Image:
    if not data:
        raise RuntimeInputError(f"{where}: empty data, not a readable image")
    try:
        image = Image.open(io.BytesIO(data), formats=READABLE_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own bound, far above ours: refuse by ours
        raise RuntimeInputError(f"{where}: the image declares more than {MAX_IMAGE_PIXELS} pixels "
                                f"(the limit), refused before decoding") from None
    except Image.UnidentifiedImageError:
        raise RuntimeInputError(f"{where}: not a readable image (not one of {', '.join(READABLE_FORMATS)}, or "
                                f"corrupt; starts with {data[:_MAX_BYTES_SHOWN]!r})") from None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise OSError, SyntaxError, struct.error, ...
        raise RuntimeInputError(f"{where}: not a readable image ({_reason(e)})") from None
    _check_size(image.size, where)
    image = _loaded(image, where)
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # noqa: BLE001 - a malformed EXIF block
        raise RuntimeInputError(f"{where}: not a readable image: corrupt EXIF data ({_reason(e)})") from None


def _loaded(image: Image.Image, where: str) -> Image.Image:
    try:
        image.load()  # the first frame only; a truncated file fails here
        return image
    except Exception as e:  # noqa: BLE001 - zlib.error, OSError('image file is truncated'), EOFError, ...
        raise RuntimeInputError(f"{where}: not a readable image: corrupt or truncated {image.format or ''} data "
                                f"({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_size(size: tuple[int, int], where: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise RuntimeInputError(f"{where}: an empty image ({width} x {height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise RuntimeInputError(f"{where}: {width} x {height} pixels is more than the limit of {MAX_IMAGE_PIXELS} "
                                "pixels (64 Mpixel); scale the image down first")


def _to_rgb(image: Image.Image, where: str) -> Image.Image:
    if image.mode in _UNCONVERTIBLE_MODES or image.mode.startswith("I;16"):
        raise RuntimeInputError(f"{where}: a {image.mode} image (16- or 32-bit samples) is not supported; "
                                "convert it to 8-bit RGB first")
    try:
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow refuses some conversions (LAB, HSV, ...) with ValueError
        raise RuntimeInputError(f"{where}: a {image.mode} image cannot be converted to RGB ({_reason(e)})") from None


def _from_array(array: np.ndarray, where: str) -> Image.Image:
    shape = "x".join(map(str, array.shape))
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise RuntimeInputError(f"{where}: an array of shape {shape}; expected height x width or height x width x "
                                "channels with 1, 3 or 4 channels (channels last; for channels first use "
                                "array.transpose(1, 2, 0))")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise RuntimeInputError(f"{where}: an empty image array (shape {shape})")
    _check_size((array.shape[1], array.shape[0]), where)
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype in (np.float32, np.float64):
        if not np.isfinite(array).all():
            raise RuntimeInputError(f"{where}: a float image array with non-finite values (NaN or infinity)")
        if array.min() < 0.0 or array.max() > 1.0:
            raise RuntimeInputError(f"{where}: a float image array must hold values in [0, 1] "
                                    f"(got [{array.min():g}, {array.max():g}])")
        pixels = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise RuntimeInputError(f"{where}: an image array of dtype {array.dtype}; expected uint8 (0-255) "
                                "or float32/float64 in [0, 1]")
    channels = pixels.shape[2]
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels == 4:
        # transformers' arithmetic for arrays (float64, rounded), not Pillow's alpha_composite,
        # whose integer rounding differs by one in places.
        alpha = pixels[:, :, 3:4] / 255.0
        pixels = np.round(alpha * pixels[:, :, :3] + (1.0 - alpha) * 255.0).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")

