"""export(): checkpoint -> traced graph -> target pipeline -> artifact directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import onnx_ir as ir

from gemma_export import __version__
from gemma_export.checkpoints import open_source
from gemma_export.checkpoints.base import Source
from gemma_export.emit import artifact
from gemma_export.emit.weights import bind_weights
from gemma_export.errors import CheckpointError, GemmaExportError
from gemma_export.frontend.trace import trace
from gemma_export.passes.context import DTYPES, QUANTS, TARGETS, ExportOptions, PassContext
from gemma_export.passes.pipeline import run_pipeline
from gemma_runtime.artifact import FORMAT_VERSION, TOKENIZER_FILE

Progress = Callable[[str, int, int], None]  # (what, done, total)


def check_options(options: ExportOptions) -> None:
    if options.target not in TARGETS:
        raise GemmaExportError(f"unknown target {options.target!r} (targets: {', '.join(TARGETS)})")
    if options.dtype not in DTYPES:
        raise GemmaExportError(f"unknown dtype {options.dtype!r} (dtypes: {', '.join(DTYPES)})")
    if options.quant not in QUANTS:
        raise GemmaExportError(f"unknown quantization {options.quant!r} (choices: {', '.join(QUANTS)})")
    if options.max_seq_len < 1:
        raise GemmaExportError(f"--max-seq-len must be positive, got {options.max_seq_len}")
    if options.block_size < 16 or options.block_size & (options.block_size - 1):
        raise GemmaExportError(f"--block-size must be a power of two >= 16, got {options.block_size}")
    if options.target == "generic" and (options.dtype, options.quant) != ("fp32", "none"):
        raise GemmaExportError("target 'generic' exports fp32 without quantization")
    if options.calibrate and options.quant == "none":
        raise GemmaExportError("--calibrate applies to --quant int8 or int4")


def export(source_path: Path | str | None, out: Path | str, options: ExportOptions, *, force: bool = False,
           dump_ir: Path | None = None, progress: Progress | None = None) -> dict:
    """Writes the artifact; returns its manifest."""
    check_options(options)
    out = Path(out)
    artifact.check_output(out, force)  # fail before the slow part
    say = progress or (lambda what, done, total: None)
    started = time.time()
    say("reading checkpoint", 0, 1)
    source = open_source(source_path)
    cfg = source.config
    options = _clamp_seq_len(options, cfg.max_position_embeddings)
    say("tracing", 0, 1)
    model = trace(cfg)
    bind_weights(model, source.weights)
    ctx = PassContext(cfg, options, tokenizer_model=source.tokenizer_model)
    passes = run_pipeline(model, ctx, dump_ir, on_pass=lambda name, n: say(f"pass {name}", n, n))
    manifest = _manifest(model, source, ctx, passes)
    with artifact.staging(out, force) as tmp:
        artifact.save_model(model, tmp, lambda name, i, total: say("writing weights", i + 1, total))
        if source.tokenizer_model is not None:
            (tmp / TOKENIZER_FILE).write_bytes(source.tokenizer_model)
        manifest["export_seconds"] = round(time.time() - started, 2)
        artifact.write_manifest(tmp, manifest)
    return manifest


def _clamp_seq_len(options: ExportOptions, context: int) -> ExportOptions:
    import dataclasses
    return dataclasses.replace(options, max_seq_len=min(options.max_seq_len, context))


def _io(values) -> dict:
    out = {}
    for v in values:
        dims = [d if isinstance(d, int) else str(d) for d in (v.shape or [])]
        out[v.name] = {"dtype": v.dtype.name.lower() if v.dtype is not None else None, "shape": dims}
    return out


def _special_tokens(source: Source) -> dict:
    cfg = source.config
    tokens = {"bos": cfg.bos_token_id, "eos": cfg.eos_token_id, "pad": cfg.pad_token_id,
              "start_of_turn": None, "end_of_turn": None}
    if source.tokenizer_model is not None:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(source.tokenizer_model)
        if sp.get_piece_size() > cfg.vocab_size:
            raise CheckpointError(f"{source.description}: tokenizer has {sp.get_piece_size()} pieces, "
                                  f"more than the model's vocabulary ({cfg.vocab_size})")
        for key, piece in (("start_of_turn", "<start_of_turn>"), ("end_of_turn", "<end_of_turn>")):
            i = sp.piece_to_id(piece)
            tokens[key] = i if sp.id_to_piece(i) == piece else None
    return tokens


def _manifest(model: ir.Model, source: Source, ctx: PassContext, passes: list[dict]) -> dict:
    cfg, options = ctx.config, ctx.options
    kv = {"layout": "concat", "max_seq_len": options.max_seq_len, "dtype": "fp32",
          "per_layer_window": [cfg.layer_window(i) for i in range(cfg.num_layers)]}
    kv.update(ctx.report.pop("kv_cache", {}))
    return {
        "format_version": FORMAT_VERSION,
        "producer": f"gemma-export {__version__}",
        "family": cfg.family,
        "config": cfg.to_dict(),
        "target": options.target,
        "dtype": options.dtype,
        "quant": {"method": options.quant, "block_size": options.block_size, "calibrated": options.calibrate,
                  "embeddings_quantized": options.quant != "none" and not options.keep_embeddings_fp},
        "inputs": _io(model.graph.inputs),
        "outputs": _io(model.graph.outputs),
        "kv_cache": kv,
        "tokens": _special_tokens(source),
        "generation_config": source.generation_config,
        "passes": passes,
        "report": ctx.report,
        "sources": source.fingerprints,
        "source": source.description,
        "engines": [],
    }
