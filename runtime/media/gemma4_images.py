"""Gemma 4's image preprocessing (an aspect-preserving resize to a soft-token budget, rescale, cut
into patches padded to the budget, with each patch's (x, y) position; as transformers'
Gemma4ImageProcessorPil; Gemma 4 Unified's merged patches, as its Gemma4UnifiedImageProcessor) and
the expansion of each image placeholder into boi + image token x
count + eoi with the mm_token_type_ids Gemma4Processor returns.

Gemma 4's placeholder and its expansion are all special tokens, which the tokenizer never merges
with the text around them, so the expansion works on token ids.
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

SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)
IMAGE_TYPE = 1  # mm_token_type_ids: 0 text, 1 image, 2 video, 3 audio


@dataclasses.dataclass(frozen=True)
class Gemma4ImageProcessing:
    """The settings of Gemma 4's image processor (defaults: transformers' Gemma4ImageProcessorPil)."""

    patch_size: int = 16
    max_soft_tokens: int = 280
    pooling_kernel_size: int = 3
    resample: int = 3  # a PIL resampling filter (3 bicubic)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = False  # Gemma 4 takes pixels in [0, 1]
    image_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    image_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        if self.max_soft_tokens not in SOFT_TOKEN_BUDGETS:
            raise ValueError(f"max_soft_tokens = {self.max_soft_tokens} is not one of {SOFT_TOKEN_BUDGETS}")
        if self.patch_size <= 0 or self.pooling_kernel_size <= 0:
            raise ValueError("patch_size and pooling_kernel_size must be positive")
        if self.resample not in range(6):
            raise ValueError(f"resample = {self.resample} is not a PIL resampling filter (0 to 5)")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or 0.0 in self.image_std:
            raise ValueError(f"image_mean {self.image_mean} / image_std {self.image_std}: three values, std non-zero")

    @property
    def max_patches(self) -> int:
        return self.max_soft_tokens * self.pooling_kernel_size ** 2

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Gemma4ImageProcessing":
        """The inverse of to_dict (a manifest's copy); an unknown key is an error naming it."""
        return from_dict(cls, data, "Gemma 4 image processing")


def target_size(width: int, height: int, settings: Gemma4ImageProcessing, where: str = "image") -> tuple[int, int]:
    """(width, height) of the resized image: the largest multiples of patch x pooling kernel that
    keep the aspect ratio within the budget's patches; a very thin image keeps one row (or column)
    of pooled patches and is stretched along it as far as the ratio, the budget allows."""
    step = settings.patch_size * settings.pooling_kernel_size
    budget_px = settings.max_patches * settings.patch_size ** 2
    scale = math.sqrt(budget_px / (width * height))
    new_w = int(math.floor(scale * width / step)) * step
    new_h = int(math.floor(scale * height / step)) * step
    longest = (settings.max_patches // settings.pooling_kernel_size ** 2) * step
    if new_w == 0 and new_h == 0:
        raise RuntimeInputError(f"{where}: {width} x {height} pixels cannot be resized to a whole patch grid")
    if new_h == 0:
        new_h, new_w = step, min(int(math.floor(width / height)) * step, longest)
    elif new_w == 0:
        new_w, new_h = step, min(int(math.floor(height / width)) * step, longest)
    if new_w * new_h > budget_px:
        raise RuntimeInputError(f"{where}: {width} x {height} pixels is too elongated for the "
                                f"{settings.max_soft_tokens}-token budget (it would need {new_w} x {new_h})")
    return new_w, new_h


def _patches(image: Image.Image, settings: Gemma4ImageProcessing, where: str, merged: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    """One image's patches [count, p*p*3] (rows of patches, each patch's pixels row by row, RGB
    innermost) and their (x, y) positions [count, 2]. merged: p is patch_size x pooling_kernel_size
    (Gemma 4 Unified's model patches: transformers merges each k x k block of small patches into
    one, its pixels row by row over the block, at the block's position)."""
    size = target_size(*image.size, settings, where)
    if size != image.size:
        image = image.resize(size, resample=settings.resample)
    x = np.asarray(image).astype(np.float64)
    if settings.do_rescale:
        x = x * settings.rescale_factor
    x = x.astype(np.float32)
    if settings.do_normalize:
        x = (x - np.asarray(settings.image_mean, np.float32)) / np.asarray(settings.image_std, np.float32)
    p = settings.patch_size * (settings.pooling_kernel_size if merged else 1)
    rows, cols = x.shape[0] // p, x.shape[1] // p
    patches = x.reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, p * p * 3)
    ys, xs = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
    return patches, np.stack([xs, ys], axis=-1)


def preprocess(images: Sequence[ImageInput], settings: Gemma4ImageProcessing, merged: bool = False
               ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(pixel_values float32 [n, max_patches, 3*p*p], image_position_ids int64 [n, max_patches, 2],
    soft tokens per image): patches beyond an image's own are zeros at position (-1, -1). merged
    (Gemma 4 Unified): max_soft_tokens model patches of (patch_size x pooling_kernel_size)^2 x 3
    pixels each, one soft token per model patch."""
    if isinstance(images, (str, bytes, Image.Image, np.ndarray)):
        raise RuntimeInputError("images: expected a list of images")
    if not images:
        raise RuntimeInputError("images: an empty list")
    n = len(images)
    p = settings.patch_size * (settings.pooling_kernel_size if merged else 1)
    slots, per_token = (settings.max_soft_tokens, 1) if merged else (settings.max_patches,
                                                                    settings.pooling_kernel_size ** 2)
    pixel_values = np.zeros((n, slots, 3 * p * p), np.float32)
    positions = np.full((n, slots, 2), -1, np.int64)
    counts = []
    for i, item in enumerate(images):
        where = f"image {i + 1}"
        patches, pos = _patches(load_image(item, where, convert_rgb=settings.do_convert_rgb), settings, where, merged)
        pixel_values[i, :len(patches)] = patches
        positions[i, :len(patches)] = pos
        counts.append(len(patches) // per_token)
    return pixel_values, positions, counts


@dataclasses.dataclass(frozen=True)
class Gemma4ImageTokens:
    """The ids of Gemma 4's image tokens (config.json: image_token_id, boi_token_id, eoi_token_id)."""

    image_token_id: int  # `<|image|>`: the prompt's placeholder and the soft tokens
    boi_token_id: int  # `<|image>`
    eoi_token_id: int  # `<image|>`


def expand_ids(ids: Sequence[int], soft_tokens: Sequence[int], tokens: Gemma4ImageTokens
               ) -> tuple[list[int], list[int]]:
    """(input_ids, mm_token_type_ids): each image token of the tokenized prompt replaced by boi +
    image token x that image's soft-token count + eoi, as Gemma4Processor does; type 1 at the image
    tokens."""
    count = sum(1 for i in ids if i == tokens.image_token_id)
    if count != len(soft_tokens):
        raise RuntimeInputError(f"the prompt has {count} image placeholder(s) for {len(soft_tokens)} image(s): "
                                "write one per image")
    if any(i in (tokens.boi_token_id, tokens.eoi_token_id) for i in ids):
        raise RuntimeInputError("the prompt holds an image delimiter token as text; only the image placeholder "
                                "marks an image")
    out: list[int] = []
    images = iter(soft_tokens)
    for i in ids:
        if i == tokens.image_token_id:
            out += [tokens.boi_token_id, *[i] * next(images), tokens.eoi_token_id]
        else:
            out.append(int(i))
    return out, [IMAGE_TYPE if i == tokens.image_token_id else 0 for i in out]
