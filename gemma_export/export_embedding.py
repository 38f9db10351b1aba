"""An embedding model's export: a sentence-transformers folder -> the traced embedder -> the
target's embedding pipeline -> an artifact with one embedding_head graph and the manifest's
`embedding` section (its dimensions, prompts and the tokenizer's framing of a text)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from gemma_export import __version__
from gemma_export.checkpoints.sentence_transformers import EmbeddingSource, describe_modules
from gemma_export.emit import artifact
from gemma_export.errors import CheckpointError, GemmaExportError
from gemma_export.frontend.trace import bind_weights, trace_embedder
from gemma_export.passes.context import PassContext
from gemma_export.passes.pipeline import run_pipeline
from gemma_export.targets import TARGETS, ExportOptions
from gemma_runtime.interface import BATCH, EMBEDDING_HEAD
from gemma_runtime.manifest import (DATA_FILE, FORMAT_VERSION, MODEL_FILE, EmbeddingSpec, Execution, Graph, KVCache,
                                    Manifest, TensorSpec, Tokens, write_manifest)

Progress = Callable[[str, int, int], None]


def check_options(options: ExportOptions) -> None:
    """What an embedding export supports today, refused by name (options as resolve_options returns them)."""
    target = TARGETS[options.target]
    supported = [t.name for t in TARGETS.values() if t.embedding_passes]
    if not target.embedding_passes:
        raise GemmaExportError(f"target {target.name!r} does not export embedding models yet (targets: "
                               f"{', '.join(supported)})")
    if options.dtype not in ("fp32", "fp16"):
        raise GemmaExportError(f"--dtype {options.dtype} is not supported for embedding models yet (fp32, fp16)")
    if options.quant != "none" or options.calibrate:
        raise GemmaExportError("--quant and --calibrate are not supported for embedding models yet")


def export_embedding(source: EmbeddingSource, claim: artifact.Claim, options: ExportOptions, dump_ir: Path | None,
                     say: Progress) -> Manifest:
    started = time.time()
    check_options(options)
    cfg = source.config
    limits = [options.max_seq_len, cfg.text.max_position_embeddings, source.max_seq_length]
    options = dataclasses.replace(options, max_seq_len=min(n for n in limits if n is not None))
    tokenizer = source.tokenizer()
    if tokenizer is not None and tokenizer.vocab_size > cfg.text.vocab_size:
        raise CheckpointError(f"{source.description}: tokenizer has {tokenizer.vocab_size} pieces, more than the "
                              f"model's vocabulary ({cfg.text.vocab_size})")
    say("tracing", 0, 1)
    model = trace_embedder(cfg)
    bind_weights(model, source.weights)
    target = TARGETS[options.target]
    ctx = PassContext(cfg.text, dataclasses.replace(target, passes=target.embedding_passes), options, (),
                      tokenizer=tokenizer, weights=source.weights)
    passes = run_pipeline(model, ctx, dump_ir, on_pass=lambda name, n: say(f"pass {name}", n, n))
    text = cfg.text
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        producer=f"gemma-export {__version__}",
        family=text.family,
        config=cfg.to_dict(),
        target=target.name,
        dtype=options.dtype,
        quant={"method": "none", "block_size": options.block_size, "calibrated": False, "embeddings_quantized": False},
        graphs={EMBEDDING_HEAD: Graph(EMBEDDING_HEAD, MODEL_FILE, DATA_FILE, _specs(model.graph.inputs),
                                      _specs(model.graph.outputs))},
        kv_cache=KVCache("concat", options.max_seq_len, ()),
        execution=Execution(("ort",), ("cpu",)),
        tokens=Tokens(bos=text.bos_token_id, eos=text.eos_token_id, pad=text.pad_token_id),
        generation_config=None,
        passes=passes,
        report={**ctx.report, "embedding": describe_modules(source)},
        sources=source.fingerprints,
        source=source.description,
        embedding=EmbeddingSpec(cfg.dimensions, source.prompts, source.default_prompt_name, source.prefix_ids,
                                source.suffix_ids),
    )
    with artifact.staging(claim) as tmp:
        files = artifact.save_model(model, tmp, lambda name, i, total: say("writing weights", i + 1, total))
        if source.tokenizer_file is not None:
            name, data = source.tokenizer_file
            files[name] = artifact.write_file(tmp / name, data)
        manifest = dataclasses.replace(manifest, files=files, export_seconds=round(time.time() - started, 2))
        write_manifest(tmp, manifest)
    return manifest


def _specs(values) -> dict[str, TensorSpec]:
    return {v.name: TensorSpec(v.dtype.name.lower() if v.dtype is not None else None,
                               tuple(d if isinstance(d, int) else BATCH if i == 0 else str(d)
                                     for i, d in enumerate(v.shape or [])))
            for v in values}
