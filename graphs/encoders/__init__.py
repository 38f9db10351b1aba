"""The media encoders of multimodal Gemma checkpoints as torch modules: pixels or audio features in,
soft tokens out ([items, tokens, text hidden], fp32), the rows the decoder splices in at its
placeholder positions.

Each encoder module:
- is built from a frozen config dataclass in its own file (parsed strictly from the checkpoint's
  tower config by gemma_export/checkpoints; every field understood or refused);
- names its parameters as transformers 5.x saves them, without a leading `model.` (Gemma 3:
  `vision_tower.*`, `multi_modal_projector.*`; Gemma 4: `vision_tower.*`, `embed_vision.*`,
  `audio_tower.*`, `embed_audio.*`; Gemma 4 Unified: `vision_embedder.*`, `embed_vision.*`,
  `embed_audio.*`), so that weights bind by name;
- takes, as forward's positional arguments, the arrays transformers' processor returns, under the
  names in its INPUTS (pixel_values, image_position_ids, input_features, input_features_mask, ...);
- traces with torch.onnx.export (dynamo) on the meta device with the item count (and a variable
  patch or frame count) dynamic; a tensor that is not a checkpoint weight is computed in forward
  or returned by constant_buffers() with its value, which the tracer binds.
"""
