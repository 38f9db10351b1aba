"""An artifact's media, prepared as its checkpoint's processor would: images and audio clips turned
into the encoders' arrays and a prompt whose placeholders are expanded into the tokens the soft
tokens replace, by the kinds and settings the manifest records (its multimodal section).

A prompt marks each item with its placeholder (Gemma 3 `<start_of_image>`, Gemma 4 and Gemma 4
Unified `<|image|>` and `<|audio|>`), in order. A text prompt with no placeholder gets one per item
in front of it, images before audio, where Gemma's chat templates put media in a user turn."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import AUDIO_ENCODER, IMAGE_ENCODER
from gemma_runtime.media import gemma3_images, gemma4_audio, gemma4_images, gemma4_unified_audio
from gemma_runtime.media.audio import load_audio
from gemma_runtime.tokenizer import Tokenizer


@dataclasses.dataclass
class Prepared:
    """A prompt's expanded ids, and per modality the encoder's arrays (None: no such items)."""

    ids: list[int]
    arrays: dict[str, dict[str, np.ndarray]]  # encoder role -> its named inputs


def prepare(section: dict[str, Any], tokenizer: Tokenizer, prompt: str, images: Sequence = (),
            audio: Sequence = ()) -> Prepared:
    image, sound = section.get("image"), section.get("audio")
    if images and image is None:
        raise RuntimeInputError("this artifact takes no images (exported with --text-only, or its checkpoint has no "
                                "vision encoder)")
    if audio and sound is None:
        raise RuntimeInputError("this artifact takes no audio (exported with --text-only, or its checkpoint has no "
                                "audio encoder)")
    marks = []
    if images:
        marks.append((placeholder(image, tokenizer), len(images)))
    if audio:
        marks.append((placeholder(sound, tokenizer), len(audio)))
    if not any(mark in prompt for mark, _ in marks):
        prompt = "".join(mark * n for mark, n in marks) + prompt
    arrays: dict[str, dict[str, np.ndarray]] = {}
    if image is not None:
        counts: list[int] = []
        if images:
            arrays[IMAGE_ENCODER], counts = image_arrays(image, images)
        if image["kind"] == "gemma3":
            tokens = gemma3_images.Gemma3ImageTokens(image["token_id"], image["tokens_per_image"])
            ids, _ = gemma3_images.expand_prompt(prompt, counts, tokenizer, tokens)
        else:
            ids, _ = gemma4_images.expand_ids(tokenizer.encode(prompt), counts, gemma4_images.Gemma4ImageTokens(
                image["token_id"], image["begin_id"], image["end_id"]))
    else:
        ids = tokenizer.encode(prompt)
    if sound is not None:
        counts = []
        if audio:
            arrays[AUDIO_ENCODER], counts = audio_arrays(sound, audio)
        ids, _ = gemma4_audio.expand_audio_placeholders(ids, counts, audio_token_id=sound["token_id"],
                                                        boa_token_id=sound["begin_id"], eoa_token_id=sound["end_id"])
    return Prepared(ids, arrays)


def image_arrays(entry: dict[str, Any], images: Sequence) -> tuple[dict[str, np.ndarray], list[int]]:
    """The image encoder's inputs for these images, by the manifest's image entry, and per image what
    its placeholder expands by (Gemma 3: its pan-and-scan crops; Gemma 4: its soft tokens)."""
    if entry["kind"] == "gemma3":
        pixels, crops = gemma3_images.preprocess(images, gemma3_images.Gemma3ImageProcessing.from_dict(
            entry["processing"]))
        return {"pixel_values": pixels}, crops
    settings = gemma4_images.Gemma4ImageProcessing.from_dict(entry["processing"])
    pixels, positions, counts = gemma4_images.preprocess(images, settings, merged=entry["kind"] == "gemma4_unified")
    return {"pixel_values": pixels, "image_position_ids": positions}, counts


def audio_arrays(entry: dict[str, Any], audio: Sequence) -> tuple[dict[str, np.ndarray], list[int]]:
    """The audio encoder's inputs for these clips, by the manifest's audio entry, and each clip's
    soft-token count: Gemma 4's log-mel frames, or Gemma 4 Unified's raw sample frames."""
    if entry["kind"] == "gemma4_unified":
        unified = gemma4_unified_audio.Gemma4UnifiedAudioProcessing.from_dict(entry["processing"])
        clips = [load_audio(item, unified.sampling_rate) for item in audio]
        features, mask = gemma4_unified_audio.frames(clips, unified)
        return {"input_features": features, "input_features_mask": mask}, [int(row.sum()) for row in mask]
    settings = gemma4_audio.Gemma4AudioProcessing.from_dict(entry["processing"])
    clips = [load_audio(item, settings.sampling_rate, max_samples=settings.max_samples) for item in audio]
    features, mask = gemma4_audio.features(clips, settings)
    return {"input_features": features, "input_features_mask": mask}, [gemma4_audio.soft_tokens(row) for row in mask]


def clip_lengths(entry: dict[str, Any], context: int) -> tuple[int, int]:
    """The shortest and the longest clip, in samples, the manifest's audio entry takes (Gemma 4
    Unified states no longest: what fills a context of that many tokens)."""
    if entry["kind"] == "gemma4_unified":
        unified = gemma4_unified_audio.Gemma4UnifiedAudioProcessing.from_dict(entry["processing"])
        return 1, context * unified.samples_per_token
    settings = gemma4_audio.Gemma4AudioProcessing.from_dict(entry["processing"])
    return settings.min_samples, settings.max_samples


def placeholder(entry: dict[str, Any], tokenizer: Tokenizer) -> str:
    """The text that marks one item of a manifest's image or audio entry in a prompt: Gemma 3's
    `<start_of_image>` (its image token is never typed), else the piece of the entry's token id."""
    if entry["kind"] == "gemma3":
        return gemma3_images.BOI
    return tokenizer.piece(entry["token_id"])
