"""export(): checkpoint -> traced graph -> target pipeline -> artifact directory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import onnx_ir as ir

from gemma_export import __version__, export_embedding, export_media
from gemma_export.checkpoints import open_source
from gemma_export.checkpoints.base import Source, WeightSource
from gemma_export.checkpoints.safetensors_dir import TEXT_PREFIXES
from gemma_export.checkpoints.sentence_transformers import is_embedding_folder, open_embedding_folder
from gemma_export.emit import artifact
from gemma_export.errors import CheckpointError, GemmaExportError
from gemma_export.frontend.trace import bind_weights, trace
from gemma_export.passes.context import PassContext
from gemma_export.passes.pipeline import run_pipeline
from gemma_export.quantization.method import QuantMethod
from gemma_export.targets import DEFAULT_TARGET, DTYPES, QUANTS, TARGETS, ExportOptions
from gemma_graphs.config import GemmaConfig
from gemma_graphs.gemma import cache_tensors
from gemma_graphs.roles import roles
from gemma_export.chat_formats import CHAT_FORMATS, EXTRA_STOP_PIECES
from gemma_runtime.interface import BATCH, DECODER, CacheTensor
from gemma_runtime.manifest import (DATA_FILE, FORMAT_VERSION, MODEL_FILE, Execution, Graph, KVCache, Manifest,
                                    TensorSpec, Tokens, write_manifest)
from gemma_runtime.tokenizer import Tokenizer

Progress = Callable[[str, int, int], None]  # (what, done, total)
_CACHE_DTYPES = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}


def resolve_options(options: ExportOptions) -> ExportOptions:
    """The options checked against the target's table entry, with the target's default dtype filled in."""
    target = TARGETS.get(options.target or DEFAULT_TARGET)
    if target is None:
        raise GemmaExportError(f"unknown target {options.target!r} (targets: {', '.join(TARGETS)})")
    dtype = options.dtype or target.dtypes[0]
    if dtype not in DTYPES:
        raise GemmaExportError(f"unknown dtype {dtype!r} (dtypes: {', '.join(DTYPES)})")
    if options.quant not in QUANTS:
        raise GemmaExportError(f"unknown quantization {options.quant!r} (choices: {', '.join(QUANTS)})")
    if dtype not in target.dtypes:
        raise GemmaExportError(f"target {target.name!r} exports {' or '.join(target.dtypes)}, not {dtype}")
    if options.quant not in target.quants:
        raise GemmaExportError(f"target {target.name!r} exports {' or '.join(target.quants)} quantization, "
                               f"not {options.quant}")
    if options.inline_functions and "inline_functions" not in target.passes:
        raise GemmaExportError(f"--inline-functions applies to targets whose graph keeps the project's functions "
                               f"(generic; openvino always inlines them), not {target.name!r}, whose passes "
                               "lower those nodes to its own ops")
    if options.max_seq_len < 1:
        raise GemmaExportError(f"--max-seq-len must be positive, got {options.max_seq_len}")
    if options.block_size < 16 or options.block_size & (options.block_size - 1):
        raise GemmaExportError(f"--block-size must be a power of two >= 16, got {options.block_size}")
    if options.lm_head_candidates < 0:
        raise GemmaExportError(f"--lm-head-candidates must be 0 (off) or positive, got {options.lm_head_candidates}")
    method = QuantMethod.parse(options.quant)
    if options.calibrate and method.bits is None:
        raise GemmaExportError("--calibrate applies to --quant int8 or int4 (and their -uniform forms)")
    if options.max_size_mib is not None and not method.measured:
        raise GemmaExportError(f"--max-size is the budget of the int8 / int4 / source recipes, not of --quant "
                               f"{options.quant}")
    if options.max_size_mib is not None and not options.max_size_mib > 0:
        raise GemmaExportError(f"--max-size must be positive, got {options.max_size_mib:g}")
    return dataclasses.replace(options, target=target.name, dtype=dtype)


def export(source_path: Path | str | None, out: Path | str, options: ExportOptions, *, force: bool = False,
           dump_ir: Path | None = None, progress: Progress | None = None) -> Manifest:
    """Writes the artifact; returns its manifest."""
    options = resolve_options(options)
    out = Path(out)
    # OUT is claimed before the slow part: a second export to the same place fails at once, and
    # what a killed export left there is resolved before this one decides anything about OUT.
    say = progress or (lambda what, done, total: None)
    embedding = is_embedding_folder(source_path)
    if embedding:
        export_embedding.check_options(options)
    with artifact.claim(out, force, tell=lambda note: say(note, 1, 1)) as claim:
        if embedding:
            say("reading checkpoint", 0, 1)
            source = open_embedding_folder(Path(source_path))
            return export_embedding.export_embedding(source, claim, options, dump_ir, say)
        return _export(source_path, claim, options, dump_ir, say)


def _export(source_path: Path | str | None, claim: artifact.Claim, options: ExportOptions, dump_ir: Path | None,
            say: Progress) -> Manifest:
    started = time.time()
    say("reading checkpoint", 0, 1)
    source = with_media(open_source(source_path), options)
    cfg = source.config
    options = dataclasses.replace(options, max_seq_len=min(options.max_seq_len, cfg.max_position_embeddings))
    chosen = export_media.encoders(source, options)  # their weights and settings checked before the slow part
    stored = export_media.check_weights(source, chosen, TEXT_PREFIXES[source.multimodal.model_type]) if chosen else {}
    multimodal = export_media.multimodal_section(source, chosen, cfg.media_blocks)
    say("tracing", 0, 1)
    model = trace(cfg)
    bind_weights(model, source.weights)
    tokenizer = source.tokenizer()
    ctx = pass_context(cfg, options, tokenizer, source.weights)
    ctx.copied_bytes = len(source.tokenizer_file()[1]) if source.tokenizer_file() is not None else 0
    passes = run_pipeline(model, ctx, dump_ir, on_pass=lambda name, n: say(f"pass {name}", n, n))
    manifest = _manifest(model, source, ctx, passes, multimodal)
    template_files: dict[str, bytes] = {}
    if source.chat_template is not None:
        spec, template_files = source.chat_template.for_artifact(tokenizer, cfg.bos_token_id, cfg.eos_token_id)
        manifest = dataclasses.replace(manifest, chat_template=spec)
    with artifact.staging(claim) as tmp:
        files = artifact.save_model(model, tmp, lambda name, i, total: say("writing weights", i + 1, total))
        if chosen:
            graphs, encoder_files, reports = export_media.write_encoders(source, chosen, stored, multimodal, options,
                                                                         tmp, say)
            manifest = dataclasses.replace(manifest, graphs={**manifest.graphs, **graphs},
                                           report={**manifest.report, **({"encoders": reports} if reports else {})})
            files.update(encoder_files)
        if source.tokenizer_file() is not None:
            name, data = source.tokenizer_file()
            files[name] = artifact.write_file(tmp / name, data)
        for name, data in template_files.items():
            files[name] = artifact.write_file(tmp / name, data)
        manifest = dataclasses.replace(manifest, files=files, export_seconds=round(time.time() - started, 2))
        write_manifest(tmp, manifest)
    return manifest


def with_media(source: Source, options: ExportOptions) -> Source:
    """The source whose decoder takes the encoders' rows (a multimodal checkpoint, not --text-only)."""
    if source.multimodal is None or options.text_only:
        return source
    return dataclasses.replace(source, config=dataclasses.replace(source.config, media_inputs=True))


def pass_context(cfg: GemmaConfig, options: ExportOptions, tokenizer: Tokenizer | None = None,
                 weights: WeightSource | None = None) -> PassContext:
    """What the passes of an export read; options as resolve_options() returns them."""
    return PassContext(cfg, TARGETS[options.target], options, tuple(cache_tensors(cfg)), tokenizer=tokenizer,
                       weights=weights)


def _specs(values) -> dict[str, TensorSpec]:
    return {v.name: TensorSpec(v.dtype.name.lower() if v.dtype is not None else None,
                               tuple(d if isinstance(d, int) else str(d) for d in (v.shape or [])))
            for v in values}


def _special_tokens(source: Source, tokenizer: Tokenizer | None) -> Tokens:
    """The config's bos/eos/pad, the family's chat-turn pieces and every id that ends a model turn,
    looked up in the tokenizer (None where it lacks them)."""
    cfg = source.config
    start = end = None
    extra = ()
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"{source.description}: tokenizer has {tokenizer.vocab_size} pieces, "
                                  f"more than the model's vocabulary ({cfg.vocab_size})")
        chat = CHAT_FORMATS[cfg.family]
        start, end = tokenizer.token_id(chat.turn_start), tokenizer.token_id(chat.turn_end)
        extra = tuple(tokenizer.token_id(p) for p in EXTRA_STOP_PIECES.get(cfg.family, ()))
    stop = tuple(dict.fromkeys(t for t in (cfg.eos_token_id, end, *extra) if t is not None))
    return Tokens(bos=cfg.bos_token_id, eos=cfg.eos_token_id, pad=cfg.pad_token_id, start_of_turn=start,
                  end_of_turn=end, stop=stop)


def cache_buffers(graph: ir.Graph, caches: tuple[CacheTensor, ...], max_seq_len: int) -> KVCache:
    """The model's caches as the final graph holds them: a growing (concatenated) cache has a
    symbolic length, a static one max_seq_len positions, a ring fewer."""
    inputs = {v.name: v for v in graph.inputs}
    buffers = []
    for cache in caches:
        value = inputs[cache.input_name]
        shape = tuple(d if isinstance(d, int) else BATCH if i == 0 else str(d) for i, d in enumerate(value.shape))
        length = shape[2]
        layout = "concat" if not isinstance(length, int) else "full" if length == max_seq_len else "ring"
        buffers.append(dataclasses.replace(cache, shape=shape, dtype=_CACHE_DTYPES[value.dtype], layout=layout))
    update = "concat" if any(b.layout == "concat" for b in buffers) else "inplace"
    return KVCache(update, max_seq_len, tuple(buffers))


def _manifest(model: ir.Model, source: Source, ctx: PassContext, passes: list[dict],
              multimodal: dict | None) -> Manifest:
    tokenizer = ctx.tokenizer
    cfg, options, target = ctx.config, ctx.options, ctx.target
    return Manifest(
        format_version=FORMAT_VERSION,
        producer=f"gemma-export {__version__}",
        family=cfg.family,
        config=cfg.to_dict(),
        target=target.name,
        dtype=options.dtype,
        quant={"method": options.quant, "block_size": options.block_size, "calibrated": options.calibrate,
               "embeddings_quantized": ctx.quant_plan.get(roles(cfg).embedding, "float") != "float"},
        graphs={DECODER: Graph(DECODER, MODEL_FILE, DATA_FILE, _specs(model.graph.inputs), _specs(model.graph.outputs))},
        kv_cache=cache_buffers(model.graph, ctx.caches, options.max_seq_len),
        execution=Execution(target.backends, target.devices),
        tokens=_special_tokens(source, tokenizer),
        generation_config=source.generation_config,
        passes=passes,
        report=ctx.report,
        sources=source.fingerprints,
        source=source.description,
        multimodal=multimodal,
        chat=CHAT_FORMATS[cfg.family],
    )
