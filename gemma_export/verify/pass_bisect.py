"""`gemma-export validate OUT --reference SOURCE --bisect`: which group of passes takes an export
away from its reference, in which layer, at which node.

The export of OUT is run again from SOURCE (a checkpoint) with the options OUT's manifest records
(target, dtype, quantization, block size, calibration, cache length; a quantization recipe's
choices are taken from the manifest and given to the pipeline, which replays them without
measuring, so the quantizers act as they did for OUT). After each
runnable group of passes (passes/pipeline.py's runnable_groups: the graph runs after every pass
but between inplace_cache_io and the attention lowering) the graph as it stands runs in onnxruntime
on the CPU over one prompt (the first of validate's, through OUT's tokenizer; seeded random ids
without one), and so does the traced graph before any pass. Each run's logits and the residual
stream after every decoder layer are compared with the fp32 torch reference (graphs/gemma.py,
hidden_states()) on the same ids (walk.py); OUT itself is compared last, logits only.

Finding the layer outputs (snapshot.py): torch.onnx records each traced node's module scope
(`pkg.torch.onnx.name_scopes`, model.layers.N); a layer's output is the one [batch, seq, hidden]
float value its nodes compute and something outside the layer reads. Every traced value, and every
value a group creates, gets value metadata saying what it is (ir_utils.MEANING_PREFIX); the
passes' replace_value moves it to the value that replaces it, so the residual stream is found after
any fusion (SkipSimplifiedLayerNormalization's fourth output takes over the Add's), and two graphs'
values are matched by meaning, not by name. Only these runs carry that metadata: the export itself
never sets it, so artifacts do not change.

Tolerance: max |diff| / max |reference| of each layer's hidden state and of the logits. fp32
groups: compare.py's FP32_RELATIVE_TOLERANCE (1e-4; clean exports stay below 2e-6). From the first
pass that lowers precision on (precision at fp16/bf16, quantize_matmuls / quantize_embedding under
--quant), the precision's looser entry in walk.LOW_PRECISION_TOLERANCE applies to that group and every
later one; passes that only plan or rescale exactly (quant_recipe, activation_scaling) stay at
fp32's. Against an fp32 reference a quantized graph can only be held to what quantization itself
costs on the worst model seen, so at int4 only a gross fault stands out: the fp32 groups before
it are where a bisect is sharp.

The verdict: the first group whose graph leaves tolerance (or no longer loads or runs); in it, the
first layer whose hidden state does (or "logits" when only they do); in that layer, the node:
the graph before the group and the graph after it run again, each with every value of that
layer's computation (what its output depends on beyond the previous layer's output) that both
graphs compute, and the first of these values, in graph order, that differs beyond tolerance
points at the node computing it; when that node, or the nodes feeding it, are the group's own
(created or rewired by it), the earliest of them that reads only agreeing values is named; every
candidate is listed. When no shared value differs, the node search says so and names the group's
first new node in the layer instead.

A group that changes nothing is not run again (its row repeats the last). A graph onnxruntime has
no CPU kernel for (bf16 compute, ort-cuda's bf16) is "not run here", and the next group that runs
answers for both; any other load or run error is a divergence of that group.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gemma_export import ort_run
from gemma_export.errors import GemmaExportError
from gemma_export.quantization.method import QuantMethod
from gemma_export.targets import ExportOptions
from gemma_export.texts import PROMPTS
from gemma_export.verify.bisect_report import verdict
from gemma_export.verify.validate import reference_prefill, token_ids
from gemma_export.verify.walk import Walk
from gemma_graphs.config import GemmaConfig
from gemma_graphs.roles import roles

Progress = Callable[[str, int, int], None]


def bisect(artifact: Path | str, reference: Path | str | None, texts: Sequence[str] | None = None,
           progress: Progress | None = None) -> dict:
    """The report: every point's differences, OUT's logits, the first divergence and notes."""
    from gemma_export.checkpoints import open_source
    from gemma_runtime.manifest import read_manifest
    from gemma_runtime.tokenizer import Tokenizer

    started = time.time()
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    require_checkpoint(artifact, reference)
    from gemma_export.export import with_media

    source = open_source(reference)
    options = recorded_options(manifest, source.config)
    source = with_media(source, options)
    cfg = source.config
    expected = json.loads(json.dumps(cfg.to_dict()))
    if set(expected) != set(manifest.config):  # fields added or removed since: the graph may differ too
        raise GemmaExportError(f"{artifact} was exported by another version of gemma-export (its config has "
                               f"other fields); export it again to bisect it")
    if expected != manifest.config:
        raise GemmaExportError(f"{source.description} is not the checkpoint {artifact} was exported from "
                               "(its model config differs from the manifest's)")
    ids = token_ids(Tokenizer.in_folder(artifact, manifest.tokens.bos), manifest.tokens.bos,
                    options.max_seq_len, list(texts or PROMPTS)[:1], cfg.vocab_size,
                    set((manifest.multimodal or {}).get("placeholder_ids", {}).values()))[0]
    notes = []
    if manifest.sources != source.fingerprints:
        notes.append(f"{source.description}'s files differ from those {artifact} records having been exported from")
    plan = manifest.report.get("quantization", {}).get("choices")
    with tempfile.TemporaryDirectory(prefix="gemma-bisect-") as tmp:
        walk = reexport(source, options, ids, Path(tmp), plan, progress)
        out = walk.artifact_logits(artifact)
    notes += walk.notes
    if [p["name"] for p in manifest.passes] != [p["name"] for p in walk.passes]:
        notes.append(f"{artifact} was made by other passes than this version's (another gemma-export version): "
                     "the groups are this version's")
    else:
        counts = [f"{ours['name']} {ours['rewrites']} (OUT {theirs['rewrites']})"
                  for ours, theirs in zip(walk.passes, manifest.passes) if ours["rewrites"] != theirs["rewrites"]]
        if counts:
            notes.append(f"rewrites here differ from those OUT's manifest records: {', '.join(counts)}")
    finding = walk.finding
    return {
        "artifact": str(artifact), "reference": f"fp32 torch reference of {source.description}",
        "target": options.target, "dtype": options.dtype, "quant": options.quant,
        "options": dataclasses.asdict(options), "prompt_tokens": len(ids),
        "groups": [p.to_json() for p in walk.points],
        "artifact_logits": out,
        "first_divergence": finding,
        "verdict": verdict(finding, out, walk.points),
        "notes": notes,
        "seconds": round(time.time() - started, 2),
    }


def require_checkpoint(artifact: Path | str, reference: Path | str | None) -> None:
    """The reference of a bisect is the checkpoint to export again (None: the embedded default), not an artifact."""
    from gemma_runtime.manifest import MANIFEST_FILE

    if reference is not None and (Path(reference) / MANIFEST_FILE).is_file():
        raise GemmaExportError(f"--bisect exports again from the checkpoint {artifact} was exported from; "
                               f"{reference} is an artifact: pass that checkpoint (HF folder or .gguf) as --reference")


def recorded_options(manifest, cfg: GemmaConfig) -> ExportOptions:
    """The options OUT was exported with, as far as its manifest records them (a recipe's budget is
    not recorded: its choices are, and reexport() replays them)."""
    from gemma_export.export import resolve_options

    quant = manifest.quant
    choices = manifest.report.get("quantization", {}).get("choices", {})
    embedding_float = QuantMethod.parse(quant["method"]).quantizes and roles(cfg).embedding not in choices
    return resolve_options(ExportOptions(
        target=manifest.target, dtype=manifest.dtype, quant=quant["method"], block_size=quant["block_size"],
        calibrate=quant["calibrated"], keep_embeddings_fp=embedding_float, max_seq_len=manifest.kv_cache.max_seq_len,
        text_only=not manifest.config.get("media_inputs", False),
        lm_head_candidates=manifest.report.get("two_stage_lm_head", {}).get("candidates", 0)))


def reexport(source, options: ExportOptions, ids: list[int], folder: Path, plan: dict[str, str] | None = None,
             progress: Progress | None = None) -> Walk:
    """Runs the export's passes again on `source`, checking the graph at every runnable point;
    `plan`: the quantization recipe's choices, given to the pipeline to replay instead of measuring."""
    from gemma_export import export as export_module
    from gemma_export.frontend.trace import bind_weights
    from gemma_export.passes.pipeline import pipeline, run_pipeline, runnable_groups

    say = progress or (lambda what, done, total: None)
    cfg = source.config
    say("reference", 0, 1)
    logits, layers = reference_hidden_states(source, ids)
    say("tracing", 0, 1)
    model = export_module.trace(cfg)  # the export's own (tests cache it there)
    bind_weights(model, source.weights)
    ctx = export_module.pass_context(cfg, options, source.tokenizer(), source.weights)
    if plan:
        ctx.quant_plan = dict(plan)
    groups = runnable_groups(pipeline(ctx.target, ctx.options, ctx.config))
    walk = Walk(ids, logits, layers, options, ort_run.TensorFile(folder),
                lambda done: say("checking groups", done, len(groups) + 1))
    walk.check_traced(model, cfg)
    walk.passes = run_pipeline(model, ctx, after_group=walk.after_group)
    return walk


def reference_hidden_states(source, ids: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The fp32 torch reference's logits [1, n, vocab] and residual stream after each layer [1, n, hidden]."""
    from gemma_graphs.gemma import load_reference

    logits, layers = reference_prefill(load_reference(source.config, source.weights), source.config, ids)
    return logits.numpy(), [x.numpy() for x in layers]
