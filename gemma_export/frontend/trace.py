"""Trace graphs/gemma.py (the decoder) and graphs/embedding.py (the embedding model) on the meta
device into ONNX IR: no weight is in memory at any point.

The traced initializers keep the HF parameter names and hold no data; bind_weights points each
at its checkpoint tensor, read row range by row range when the artifact is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx_ir as ir

from gemma_export.checkpoints.base import WeightSource
from gemma_export.frontend import onnx_ops
from gemma_export.tensors import StreamedTensor
from gemma_graphs.config import EmbeddingConfig, GemmaConfig


def trace(cfg: GemmaConfig) -> ir.Model:
    import torch

    from gemma_graphs.gemma import GemmaForCausalLM, cache_tensors, io_names

    with torch.device("meta"):
        module = GemmaForCausalLM(cfg).eval()
    batch, seq, past = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    b, s, p, n = 2, 3, 4, 5
    meta = dict(device="meta")
    args = [torch.zeros(b, s, dtype=torch.int64, **meta), torch.zeros(b, s, dtype=torch.int64, **meta),
            torch.zeros(b, p + s, dtype=torch.int64, **meta)]
    shapes = [{0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: torch.export.Dim.AUTO}]
    if cfg.media_inputs:  # spliced_embeds, spliced_columns, lookahead
        spliced = torch.export.Dim("spliced", min=0)
        args += [torch.zeros(b, n, cfg.hidden_size, **meta), torch.zeros(b, n, dtype=torch.int64, **meta),
                 torch.zeros(b, s, dtype=torch.int64, **meta)]
        shapes += [{0: batch, 1: spliced}, {0: batch, 1: spliced}, {0: batch, 1: seq}]
    for slot in cache_tensors(cfg):
        args.append(torch.zeros(b, slot.kv_heads, p, slot.head_dim, **meta))
        shapes.append({0: batch, 2: past})
    input_names, output_names = io_names(cfg)
    # forward(ids, pos, mask, *rest)
    model = _export(module, args, (shapes[0], shapes[1], shapes[2], tuple(shapes[3:])), input_names, output_names)
    model.graph.inputs[2].shape = ir.Shape(["batch", "total"])  # attention_mask: past + seq
    return model


def trace_embedder(cfg: EmbeddingConfig) -> ir.Model:
    """The embedding model (graphs/embedding.py): input_ids and attention_mask [batch, seq] ->
    embeddings [batch, dimensions]."""
    import torch

    from gemma_graphs.embedding import GemmaEmbedder, io_names

    with torch.device("meta"):
        module = GemmaEmbedder(cfg).eval()
    shape = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    args = [torch.zeros(2, 3, dtype=torch.int64, device="meta") for _ in range(2)]
    return _export(module, args, (shape, shape), *io_names())


def _export(module, args: list, dynamic_shapes: tuple, input_names: list[str], output_names: list[str]) -> ir.Model:
    """torch.onnx's export of the module with the custom ops' function bodies, dims named."""
    import torch

    with _quiet():
        program = torch.onnx.export(
            module, tuple(args), dynamo=True, optimize=False, opset_version=onnx_ops.OPSET,
            dynamic_shapes=dynamic_shapes, input_names=input_names, output_names=output_names,
            custom_translation_table=onnx_ops.translation_table(), verbose=False,
        )
    model = program.model
    used = {node.op_type for node in model.graph if node.domain == onnx_ops.DOMAIN}
    for fn in onnx_ops.function_bodies():
        if fn.name in used:
            function = ir.serde.deserialize_function(fn)
            model.functions[function.identifier()] = function
    model.opset_imports[onnx_ops.DOMAIN] = onnx_ops.DOMAIN_VERSION
    _name_dims(model)
    return model


def bind_weights(model: ir.Model, weights: WeightSource) -> None:
    """Point every traced (data-less) initializer at its checkpoint tensor, as fp32 (the traced
    graph's dtype); a source that stores blocks (GGUF) also says how, for `--quant source`."""
    for name, value in model.graph.initializers.items():
        tensor = StreamedTensor(lambda a, b, name=name: weights.read_rows(name, a, b),
                                tuple(weights.shape(name)), ir.DataType.FLOAT, name)
        if hasattr(weights, "read_blocks"):
            tensor.source_type = weights.source_type(name)
            if weights.kept_as_blocks(name):
                scheme = weights.read_blocks(name, 0, 1)[1]
                tensor.source_blocks = (lambda a, b, name=name: weights.read_blocks(name, a, b)[0], scheme)
        value.const_value = tensor


def _name_dims(model: ir.Model) -> None:
    """Readable symbolic dims on the graph's inputs and outputs: batch, seq, past, total."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is not None:
            value.shape = ir.Shape([d if isinstance(d, int) else _dim_name(str(d)) for d in value.shape])


def _dim_name(text: str) -> str:
    return "total" if "past" in text and "seq" in text else text


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress and warnings meant for its own developers."""
    stream = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(stream):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
