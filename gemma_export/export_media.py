"""The media half of an export: the encoders a multimodal checkpoint has (unless --text-only), each
traced, bound to its weights and written beside the decoder, and the manifest's multimodal
section that tells the runtime how to prepare images and audio for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from gemma_export import calibrate, calibrate_media
from gemma_export.checkpoints.base import Source
from gemma_export.emit import artifact
from gemma_export.errors import CheckpointError
from gemma_export.passes import constant_axes, precision
from gemma_export.targets import TARGETS, ExportOptions
from gemma_export.towers import KINDS, Encoder, bind_encoder_weights, stored_names, trace_encoder
from gemma_runtime.manifest import FileDigest, Graph, TensorSpec

Progress = Callable[[str, int, int], None]
# Checkpoint tensors no encoder reads, by kind: SigLIP's attention-pooling head (Gemma 3 uses the
# tower's last hidden state).
_UNREAD_PREFIXES = {"gemma3_vision": ("vision_tower.head.", "vision_tower.vision_model.head.")}


def encoders(source: Source, options: ExportOptions) -> list[Encoder]:
    if source.multimodal is None or options.text_only:
        return []
    return [Encoder(kind, config) for kind, config in source.multimodal.encoders]


def check_weights(source: Source, chosen: list[Encoder], text_prefixes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Before anything slow: every encoder's tensor present with its shape, and every checkpoint
    tensor read by the decoder or an encoder (or one no encoder reads by design). Returns, per
    encoder role, its parameters' stored names."""
    weights = source.checkpoint_weights
    stored = {e.role: stored_names(e, weights, source.description) for e in chosen}
    read = {name for names in stored.values() for name in names.values()}
    unread = tuple(p for e in chosen for p in _UNREAD_PREFIXES.get(e.kind, ()))
    left = sorted(n for n in weights.names() if n not in read and n != "lm_head.weight"
                  and not n.startswith(text_prefixes) and not n.startswith(unread))
    if left:
        raise CheckpointError(f"{source.description}: {len(left)} tensor(s) no exported graph reads, e.g. {left[0]!r}")
    return stored


def write_encoders(source: Source, chosen: list[Encoder], stored: dict[str, dict[str, str]], section: dict[str, Any],
                   options: ExportOptions, folder: Path, say: Progress
                   ) -> tuple[dict[str, Graph], dict[str, FileDigest], dict[str, dict]]:
    """Each encoder's graph written into folder in the export's precision (stored: check_weights();
    section: multimodal_section()); returns its graphs, files and, per role, its report."""
    graphs, files, reports = {}, {}, {}
    for encoder in chosen:
        what = encoder.role.replace("_", " ")
        say(f"tracing the {what}", 0, 1)
        model = trace_encoder(encoder)
        bind_encoder_weights(model, source.checkpoint_weights, stored[encoder.role])
        # Reductions' axes as initializers: TensorRT's parser needs them constant, other runtimes do
        # not mind, so every target's encoder graph is the same.
        constant_axes.run(model, None)
        if options.dtype != "fp32":
            say(f"lowering the {what} to {options.dtype}", 0, 1)
            modality = KINDS[encoder.kind].modality
            feeds = calibrate_media.encoder_inputs(modality, section[modality])
            # fp32 in and out: the runtime feeds it numpy arrays, which have no bf16
            report, _ = precision.lower(model, options.dtype, TARGETS[options.target].bf16_compute,
                                        lambda values: calibrate.largest(model, feeds, values), fp32_boundary=True)
            reports[encoder.role] = {"precision": report}
        files.update(artifact.save_model(model, folder, lambda name, i, total: say(f"writing the {what}", i + 1, total),
                                         model_file=encoder.file, data_file=encoder.data_file))
        graphs[encoder.role] = Graph(encoder.role, encoder.file, encoder.data_file, _specs(model.graph.inputs),
                                     _specs(model.graph.outputs))
    return graphs, files, reports


def multimodal_section(source: Source, chosen: list[Encoder], media_blocks: str) -> dict[str, Any] | None:
    """The manifest's multimodal section: the checkpoint's towers, which were skipped, the
    placeholder ids, and per modality exported the processing settings and token ids."""
    mm = source.multimodal
    if mm is None:
        return None
    exported = {KINDS[e.kind].modality: e for e in chosen}
    section = {"model_type": mm.model_type, "towers": list(mm.towers),
               "skipped": [t for t in mm.towers if {"vision": "image"}.get(t, t) not in exported],
               "placeholder_ids": mm.placeholder_ids}
    ids = mm.placeholder_ids
    if "image" in exported:
        section["image"] = _image_entry(source, exported["image"], ids, media_blocks != "none")
    if "audio" in exported:
        section["audio"] = _audio_entry(source, exported["audio"], ids)
    return section


def _image_entry(source: Source, encoder: Encoder, ids: dict[str, int], bidirectional: bool) -> dict[str, Any]:
    from gemma_export.checkpoints.hf_image_processor import load_image_processor

    family = source.multimodal.model_type
    processor = load_image_processor(source.folder, family)
    entry = {"kind": family, "processing": processor.settings.to_dict(), "bidirectional": bidirectional,
             "token_id": _id(ids, "image_token_index", "image_token_id"),
             "begin_id": _id(ids, "boi_token_index", "boi_token_id"),
             "end_id": _id(ids, "eoi_token_index", "eoi_token_id")}
    if family == "gemma3":
        tokens = encoder.config.mm_tokens_per_image
        if processor.image_seq_length not in (None, tokens):
            raise CheckpointError(f"{processor.where}: image_seq_length {processor.image_seq_length} differs from "
                                  f"config.json's mm_tokens_per_image {tokens}")
        entry["tokens_per_image"] = tokens
    if family == "gemma4_unified":
        _unified_image_checks(source, encoder, processor)
    return entry


def _unified_image_checks(source: Source, encoder: Encoder, processor) -> None:
    """Gemma 4 Unified's image processor makes the embedder's model patches, and the decoder's
    masks hold only while an image fits the sliding window: transformers lets an image's tokens see
    each other beyond the window, our decoder bounds every sliding layer by it (their masks agree
    while an image's tokens fit in one window)."""
    settings, cfg = processor.settings, encoder.config
    if (settings.patch_size, settings.pooling_kernel_size) != (cfg.patch_size, cfg.pooling_kernel_size):
        raise CheckpointError(f"{processor.where}: patch_size {settings.patch_size} and pooling_kernel_size "
                              f"{settings.pooling_kernel_size} differ from config.json's vision_config "
                              f"({cfg.patch_size}, {cfg.pooling_kernel_size})")
    window = source.config.sliding_window
    if window is not None and settings.max_soft_tokens > window:
        raise CheckpointError(f"{processor.where}: max_soft_tokens {settings.max_soft_tokens} exceeds the decoder's "
                              f"sliding window {window}: an image that long is not supported (its tokens would "
                              "see each other beyond the window, which the exported decoder does not do)")


def _audio_entry(source: Source, encoder: Encoder, ids: dict[str, int]) -> dict[str, Any]:
    from gemma_export.checkpoints.hf_audio_processor import read_audio_processing

    settings = read_audio_processing(source.folder, source.multimodal.model_type)
    if settings is None:
        raise CheckpointError(f"{source.folder}: no audio feature extractor settings (processor_config.json or "
                              "preprocessor_config.json): exporting the audio encoder needs them (or export with "
                              "--text-only)")
    if encoder.kind == "gemma4_unified_audio" and settings.samples_per_token != encoder.config.audio_embed_dim:
        raise CheckpointError(f"{source.folder}: the feature extractor's audio_samples_per_token "
                              f"{settings.samples_per_token} differs from config.json's audio_embed_dim "
                              f"{encoder.config.audio_embed_dim}")
    return {"kind": source.multimodal.model_type, "processing": settings.to_dict(),
            "token_id": _id(ids, "audio_token_id"), "begin_id": _id(ids, "boa_token_id"),
            "end_id": _id(ids, "eoa_token_index", "eoa_token_id")}


def _id(ids: dict[str, int], *names: str) -> int:
    for name in names:
        if name in ids:
            return ids[name]
    raise CheckpointError(f"config.json states none of {', '.join(names)}: the encoder's placeholder id is unknown")


def _specs(values) -> dict[str, TensorSpec]:
    return {v.name: TensorSpec(v.dtype.name.lower() if v.dtype is not None else None,
                               tuple(d if isinstance(d, int) else str(d) for d in (v.shape or [])))
            for v in values}
