"""The media encoders an export writes beside the decoder (graphs/encoders): each one's config as
the checkpoint states it, its module traced on the meta device, and its weights bound by name."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np
import onnx_ir as ir

from gemma_export.checkpoints.base import WeightSource
from gemma_export.errors import CheckpointError
from gemma_export.frontend import onnx_ops
from gemma_export.frontend.trace import _quiet
from gemma_export.tensors import StreamedTensor
from gemma_runtime.interface import AUDIO_ENCODER, IMAGE_ENCODER, SOFT_TOKEN_MASK, SOFT_TOKENS


@dataclasses.dataclass(frozen=True)
class Kind:
    """One encoder kind: its graph role, the module (graphs/encoders/<module>.py, class), and how
    its example inputs are made for tracing."""

    role: str
    module: str
    cls: str
    example: str  # the name of the function below that makes (args, dynamic shapes)
    modality: str  # "image" or "audio": the key of its entry in the manifest's multimodal section


KINDS = {
    "gemma3_vision": Kind(IMAGE_ENCODER, "gemma3_vision", "Gemma3ImageEncoder", "_pixels", "image"),
    "gemma4_vision": Kind(IMAGE_ENCODER, "gemma4_vision", "Gemma4ImageEncoder", "_patches", "image"),
    "gemma4_audio": Kind(AUDIO_ENCODER, "gemma4_audio", "Gemma4AudioEncoder", "_frames", "audio"),
    "gemma4_unified_vision": Kind(IMAGE_ENCODER, "gemma4_unified", "Gemma4UnifiedImageEmbedder", "_merged_patches",
                                  "image"),
    "gemma4_unified_audio": Kind(AUDIO_ENCODER, "gemma4_unified", "Gemma4UnifiedAudioEmbedder", "_waveform_frames",
                                 "audio"),
}


@dataclasses.dataclass(frozen=True)
class Encoder:
    kind: str  # a key of KINDS
    config: Any  # the module's config dataclass

    @property
    def role(self) -> str:
        return KINDS[self.kind].role

    @property
    def file(self) -> str:
        return f"{self.role}.onnx"

    @property
    def data_file(self) -> str:
        return f"{self.role}.onnx.data"

    def module_class(self):
        kind = KINDS[self.kind]
        return getattr(importlib.import_module(f"gemma_graphs.encoders.{kind.module}"), kind.cls)


def trace_encoder(encoder: Encoder) -> ir.Model:
    """The encoder's graph, its initializers named as the module's parameters (data-less until
    bind_encoder_weights) and its constant buffers (given their values)."""
    import torch

    cls = encoder.module_class()
    with torch.device("meta"):
        module = cls(encoder.config).eval()
    args, shapes = globals()[KINDS[encoder.kind].example](encoder.config)
    # the runtime's names for the module's outputs: soft tokens, and a mask where items differ in length
    outputs = [SOFT_TOKENS, SOFT_TOKEN_MASK][:len(getattr(cls, "OUTPUTS", (SOFT_TOKENS,)))]
    with _quiet():
        program = torch.onnx.export(module, args, dynamo=True, optimize=False, opset_version=onnx_ops.OPSET,
                                    dynamic_shapes=shapes, input_names=list(cls.INPUTS), output_names=outputs,
                                    verbose=False)
    model = program.model
    for name, value in module.constant_buffers().items():
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        model.graph.initializers[name].const_value = ir.Tensor(array, name=name)
    return model


def parameter_shapes(encoder: Encoder) -> dict[str, tuple[int, ...]]:
    """Every weight the encoder's module reads, with its shape (built on the meta device)."""
    import torch

    with torch.device("meta"):
        module = encoder.module_class()(encoder.config)
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def stored_names(encoder: Encoder, weights: WeightSource, where: str) -> dict[str, str]:
    """Each of the module's parameters -> the checkpoint tensor holding it (transformers 5.x's
    name, with or without a leading `model.`, or the older `vision_tower.vision_model.`), its shape
    checked."""
    have = set(weights.names())
    stored = {}
    for name, shape in parameter_shapes(encoder).items():
        candidates = [name, "model." + name]
        if name.startswith("vision_tower."):
            older = "vision_tower.vision_model." + name[len("vision_tower."):]
            candidates += [older, "model." + older]
        found = [c for c in candidates if c in have]
        if not found:
            raise CheckpointError(f"{where}: tensor {name!r} of the {encoder.role.replace('_', ' ')} is missing")
        if len(found) > 1:
            raise CheckpointError(f"{where}: tensor {name!r} is stored twice ({', '.join(found)})")
        if tuple(weights.shape(found[0])) != shape:
            raise CheckpointError(f"{where}: tensor {found[0]!r} has shape {list(weights.shape(found[0]))}, the "
                                  f"config implies {list(shape)}")
        stored[name] = found[0]
    return stored


def bind_encoder_weights(model: ir.Model, weights: WeightSource, stored: dict[str, str]) -> None:
    """Every traced parameter reads its checkpoint tensor (stored_names()), row range by row range."""
    for name, tensor in stored.items():
        value = model.graph.initializers[name]
        value.const_value = StreamedTensor(lambda a, b, n=tensor: weights.read_rows(n, a, b), tuple(value.shape),
                                           ir.DataType.FLOAT, name)


# -- example inputs, per kind: (args on the meta device, dynamic shapes) -------------------------

def _pixels(cfg):
    import torch
    images = torch.export.Dim("images")
    args = (torch.zeros(2, cfg.num_channels, cfg.image_size, cfg.image_size, device="meta"),)
    return args, ({0: images},)


def _patches(cfg):
    import torch
    cell = cfg.patches_per_token
    images, patches = torch.export.Dim("images"), torch.export.Dim("patches", min=2 * cell)
    args = (torch.zeros(2, 3 * cell, cfg.patch_pixels, device="meta"),
            torch.zeros(2, 3 * cell, 2, dtype=torch.int64, device="meta"))
    return args, ({0: images, 1: patches}, {0: images, 1: patches})


def _frames(cfg):
    import torch
    from gemma_graphs.encoders.gemma4_audio import TRACE_MIN_FRAMES
    clips, frames = torch.export.Dim("clips"), torch.export.Dim("frames", min=TRACE_MIN_FRAMES)
    mel = 4 * (cfg.subsampling_conv_channels[0] // 4)  # the bins two stride-2 convolutions leave as channels / 4
    args = (torch.zeros(2, 4 * TRACE_MIN_FRAMES, mel, device="meta"),
            torch.ones(2, 4 * TRACE_MIN_FRAMES, dtype=torch.bool, device="meta"))
    return args, ({0: clips, 1: frames}, {0: clips, 1: frames})


def _merged_patches(cfg):
    import torch
    images, patches = torch.export.Dim("images"), torch.export.Dim("patches", min=2)
    args = (torch.zeros(2, 3, cfg.patch_pixels, device="meta"), torch.zeros(2, 3, 2, dtype=torch.int64, device="meta"))
    return args, ({0: images, 1: patches}, {0: images, 1: patches})


def _waveform_frames(cfg):
    import torch
    clips, frames = torch.export.Dim("clips"), torch.export.Dim("frames", min=2)
    args = (torch.zeros(2, 3, cfg.audio_embed_dim, device="meta"), torch.ones(2, 3, dtype=torch.bool, device="meta"))
    return args, ({0: clips, 1: frames}, {0: clips, 1: frames})
