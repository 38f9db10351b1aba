"""Gemma 3's image preprocessing (a square resize, rescale, normalisation and optional pan-and-scan
crops, as transformers' Gemma3ImageProcessorPil) and the expansion of each `<start_of_image>` of a
prompt into the text and tokens Gemma3Processor writes.

The expansion is textual in transformers: each `<start_of_image>` becomes
"\\n\\n<start_of_image>" + image token x tokens_per_image + "<end_of_image>\\n\\n" (with pan-and-scan
crops: "Here is the original image {that} and here are some crops to help you see better " and one
such block per crop, joined by spaces), and the whole text is tokenized. The "\\n\\n" merges with
newlines around it ("a\\n" before an image gives the single token "\\n\\n\\n"), so expanding at the
id level would differ; here the text is expanded and each run of text between the special tokens
is tokenized, which is what the tokenizer does (special tokens split the text).

The reference is Gemma3ImageProcessorPil, which AutoImageProcessor picks where torchvision is not
installed; with torchvision it picks Gemma3ImageProcessor, whose antialiased torchvision resize is
close to PIL's but not bit-equal (not measured here: no torchvision).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.media.images import ImageInput, load_image
from gemma_runtime.media.settings import as_dict, check_types, from_dict
from gemma_runtime.tokenizer import Tokenizer

RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
BOI, EOI = "<start_of_image>", "<end_of_image>"
PAN_AND_SCAN_INTRO = "Here is the original image "
PAN_AND_SCAN_CROPS = " and here are some crops to help you see better "


@dataclasses.dataclass(frozen=True)
class Gemma3ImageProcessing:
    """The settings of Gemma 3's image processor (defaults: google/gemma-3-4b-it's)."""

    image_size: int = 896
    resample: int = 2  # a PIL resampling filter (2 bilinear)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    do_convert_rgb: bool = True
    do_pan_and_scan: bool = False
    pan_and_scan_min_crop_size: int = 256
    pan_and_scan_max_num_crops: int = 4
    pan_and_scan_min_ratio_to_activate: float = 1.2

    def __post_init__(self) -> None:
        check_types(self)
        if self.image_size <= 0:
            raise ValueError(f"image_size = {self.image_size} must be positive")
        if self.resample not in RESAMPLE_NAMES:
            raise ValueError(f"resample = {self.resample} is not a PIL resampling filter (0 to 5)")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or 0.0 in self.image_std:
            raise ValueError(f"image_mean {self.image_mean} / image_std {self.image_std}: three values, std non-zero")
        if self.pan_and_scan_min_crop_size <= 0 or self.pan_and_scan_max_num_crops < 2:
            raise ValueError("pan_and_scan_min_crop_size must be positive and pan_and_scan_max_num_crops at least 2")

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Gemma3ImageProcessing":
        """The inverse of to_dict (a manifest's copy); an unknown key is an error naming it."""
        return from_dict(cls, data, "Gemma 3 image processing")


def pan_and_scan_boxes(width: int, height: int, settings: Gemma3ImageProcessing) -> list[tuple[int, int, int, int]]:
    """The crops (left, upper, right, lower) pan-and-scan cuts from an image; none when the image is
    not elongated enough or the crops would be smaller than the minimum."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side < settings.pan_and_scan_min_ratio_to_activate:
        return []
    count = min(int(math.floor(long_side / short_side + 0.5)),  # the aspect ratio, rounded half up
                int(math.floor(long_side / settings.pan_and_scan_min_crop_size)))
    count = min(settings.pan_and_scan_max_num_crops, max(2, count))
    across, down = (count, 1) if width >= height else (1, count)
    crop_w, crop_h = int(math.ceil(width / across)), int(math.ceil(height / down))
    if min(crop_w, crop_h) < settings.pan_and_scan_min_crop_size:
        return []
    # The last crop of a row ends at the image's edge (it may be narrower than the others).
    return [(x, y, min(x + crop_w, width), min(y + crop_h, height))
            for y in range(0, crop_h * down, crop_h) for x in range(0, crop_w * across, crop_w)]


def _pixels(image: Image.Image, settings: Gemma3ImageProcessing) -> np.ndarray:
    """One RGB image (or crop) as the [3, S, S] float32 array the vision tower takes."""
    size = settings.image_size
    resized = np.asarray(image.resize((size, size), resample=settings.resample))
    # The processor's order of operations and dtypes: uint8 -> float64 x factor -> float32,
    # then (x - mean) / std in float32; any other order moves the last bit.
    x = resized.astype(np.float64)
    if settings.do_rescale:
        x = x * settings.rescale_factor
    x = x.astype(np.float32)
    if settings.do_normalize:
        x = (x - np.asarray(settings.image_mean, np.float32)) / np.asarray(settings.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(images: Sequence[ImageInput], settings: Gemma3ImageProcessing) -> tuple[np.ndarray, list[int]]:
    """(pixel_values float32 [n, 3, S, S], the number of pan-and-scan crops of each image): each
    image is followed by its crops in pixel_values, as the processor orders them."""
    if isinstance(images, (str, bytes, Image.Image, np.ndarray)):
        raise RuntimeInputError("images: expected a list of images")
    if not images:
        raise RuntimeInputError("images: an empty list")
    rows, crops = [], []
    for i, item in enumerate(images):
        image = load_image(item, f"image {i + 1}", convert_rgb=settings.do_convert_rgb)
        boxes = pan_and_scan_boxes(*image.size, settings) if settings.do_pan_and_scan else []
        rows.append(_pixels(image, settings))
        rows.extend(_pixels(image.crop(box), settings) for box in boxes)
        crops.append(len(boxes))
    return np.stack(rows), crops


@dataclasses.dataclass(frozen=True)
class Gemma3ImageTokens:
    """How an image appears in Gemma 3's token sequence (config.json's ids, processor's count)."""

    image_token_id: int  # config image_token_index (262144: beyond a text-only vocabulary)
    tokens_per_image: int  # config mm_tokens_per_image (the processor's image_seq_length), 256
    boi: str = BOI
    eoi: str = EOI


def _image_block(tokens: Gemma3ImageTokens, boi_id: int, eoi_id: int) -> list[int]:
    return [boi_id, *[tokens.image_token_id] * tokens.tokens_per_image, eoi_id]


def expand_prompt(prompt: str, crops: Sequence[int], tokenizer: Tokenizer, tokens: Gemma3ImageTokens,
                  add_bos: bool = True) -> tuple[list[int], list[int]]:
    """(input_ids, token_type_ids) of a prompt whose every `<start_of_image>` stands for one image
    (crops: preprocess's count per image), as Gemma3Processor tokenizes it; token_type_ids is 1 at
    the image tokens, 0 elsewhere."""
    boi_id, eoi_id = tokenizer.token_id(tokens.boi), tokenizer.token_id(tokens.eoi)
    if boi_id is None or eoi_id is None:
        raise RuntimeInputError(f"the tokenizer has no {tokens.boi} or {tokens.eoi} piece: not a Gemma 3 "
                                "multimodal tokenizer")
    parts = prompt.split(tokens.boi)
    if len(parts) - 1 != len(crops):
        raise RuntimeInputError(f"the prompt has {len(parts) - 1} {tokens.boi} placeholder(s) for {len(crops)} "
                                "image(s): write one per image")
    # The expanded text as runs of plain text between image blocks (None).
    runs: list[str | None] = [parts[0]]
    for n, text in zip(crops, parts[1:]):
        if n:
            runs[-1] += PAN_AND_SCAN_INTRO + "\n\n"
            runs += [None, "\n\n" + PAN_AND_SCAN_CROPS + "\n\n"]
            for k in range(n):
                runs += [None, "\n\n" + (" \n\n" if k < n - 1 else "")]
            runs[-1] += text
        else:
            runs[-1] += "\n\n"
            runs += [None, "\n\n" + text]
    block = _image_block(tokens, boi_id, eoi_id)
    reserved = {boi_id, eoi_id, tokens.image_token_id}
    ids = [tokenizer.bos_id] if add_bos else []
    for run in runs:
        if run is None:
            ids += block
            continue
        piece_ids = tokenizer.encode(run, add_bos=False)
        if reserved.intersection(piece_ids):
            raise RuntimeInputError(f"the prompt holds an image token ({tokens.eoi} or the image soft token) "
                                    f"as text; only {tokens.boi} marks an image")
        ids += piece_ids
    types = [1 if i == tokens.image_token_id else 0 for i in ids]
    return ids, types
