"""Tiny multimodal artifacts (tests/tiny.py's checkpoints with an image encoder) that take text
prompts: their tokenizer is test_chat_tokens' Gemma-1-like SentencePiece model with the family's
image pieces (and Gemma 4's turn pieces) at the ids the tiny configs give them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from gemma_export.export import export
from gemma_export.targets import ExportOptions
from test_chat_tokens import gemma1_like_tokenizer
from tiny import write_multimodal_checkpoint

MEDIA_PIECES = {
    "gemma3": {378: "<start_of_image>", 379: "<end_of_image>", 380: "<image_soft_token>"},
    "gemma4": {106: "<|turn>", 107: "<turn|>", 377: "<audio|>", 378: "<|image>", 379: "<image|>", 380: "<|image|>",
               381: "<|video|>", 382: "<|audio|>", 383: "<|audio>"},
}
PLACEHOLDER = {"gemma3": "<start_of_image>", "gemma4": "<|image|>"}


def multimodal_artifact(family: str, root: Path, max_seq_len: int = 256) -> Path:
    """The family's tiny multimodal checkpoint, with its tokenizer, exported (default target) to root/family."""
    checkpoint = write_multimodal_checkpoint(family, root / f"{family}-checkpoint")
    (checkpoint / "tokenizer.model").write_bytes(gemma1_like_tokenizer(MEDIA_PIECES[family]))
    export(checkpoint, root / family, ExportOptions(max_seq_len=max_seq_len))
    return root / family


_shared: dict[str, Path] = {}


def shared_artifact(family: str, tmp_path_factory) -> Path:
    """multimodal_artifact, exported once per test session (the modules that use it share it)."""
    if family not in _shared:
        _shared[family] = multimodal_artifact(family, tmp_path_factory.mktemp(f"media-{family}"))
    return _shared[family]


def shared_checkpoint(family: str, tmp_path_factory) -> Path:
    """The checkpoint folder (with its tokenizer) of shared_artifact(family)."""
    return shared_artifact(family, tmp_path_factory).parent / f"{family}-checkpoint"


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A random RGB image as PNG bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def greedy_after(model, ids: list[int], media, n: int) -> list[int]:
    """n greedy tokens after a prompt with media (a MediaPrompt), the prompt in one call."""
    backend = model.backend
    backend.reserve(1)
    tokens = [int(backend.step([ids], [0], [len(ids)], spliced=[media.splice(0, len(ids))])[0, 0].argmax())]
    for t in range(n - 1):
        tokens.append(int(backend.step([[tokens[-1]]], [len(ids) + t], [1])[0, 0].argmax()))
    return tokens


def stepwise_after_media(model, ids: list[int], media) -> np.ndarray:
    """The logits of the prompt's positions from the last media item's last one on: the prompt up to
    there in one call, then token by token."""
    last = media.spans[-1].end
    backend = model.backend
    backend.reserve(1)
    rows = [backend.step([ids[:last]], [0], [last], spliced=[media.splice(0, last)])[:, 0]]
    rows += [backend.step([[ids[t]]], [t], [1])[:, 0] for t in range(last, len(ids))]
    return np.concatenate(rows)
