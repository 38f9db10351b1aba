"""The gemma-export command line. Exit codes: 0 success, 1 parity failure, 2 bad input or usage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from gemma_export.errors import GemmaExportError
from gemma_export.targets import DEFAULT_BUDGET, DEFAULT_TARGET, DTYPES, SOURCE_HEADROOM, TARGETS

BACKEND = typer.Option(None, help="ort | trt | openvino (default: the artifact's first: openvino for the openvino "
                       "target, else ort)")
SPECULATIVE = typer.Option(None, help="speculative decoding (same output, fewer calls where the text quotes itself): "
                           "prompt-lookup, or with its options prompt-lookup:k=4,n=3,min_n=1")
DEVICE = typer.Option(None, help="cpu | cuda (default: the artifact's: cuda for ort-cuda, else cpu)")
IMAGE_HELP = ("an image file (repeatable): one per image placeholder of the prompt, in order (<start_of_image> for "
              "Gemma 3, <|image|> for Gemma 4), else put before the text")
AUDIO_HELP = "a WAV file (repeatable): one per <|audio|> placeholder of the prompt, else put before the text"
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile Gemma checkpoints to ONNX / TensorRT and run them.")


class _Progress:
    """One line on stderr, redrawn while a phase advances."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.phase = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if what != self.phase:
            if self.phase is not None and self.tty:
                sys.stderr.write("\n")
            self.phase = what
            if not self.tty:
                sys.stderr.write(f"{what}...\n")
        if self.tty:
            width = 30
            fill = int(width * done / total) if total else width
            sys.stderr.write(f"\r{what:<32} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.phase is not None:
            sys.stderr.write("\n")


@app.command()
def export(
    source: Optional[Path] = typer.Argument(None, help="HF folder or .gguf file; none: the embedded default model"),
    out: Path = typer.Option(..., "-o", "--out", help="artifact folder to write"),
    target: str = typer.Option(DEFAULT_TARGET, help=" | ".join(TARGETS)),
    dtype: Optional[str] = typer.Option(None, help=f"{' | '.join(DTYPES)} (default: the target's first: "
                                        + ", ".join(f"{t.name} {t.dtypes[0]}" for t in TARGETS.values()) + ")"),
    quant: str = typer.Option("none", help="none | int4 | int8 (a mix of widths chosen by measured sensitivity "
                              "within --max-size) | int4-uniform | int8-uniform | source (a quantized GGUF's own "
                              "blocks, float where measured to matter most) | source-uniform (its blocks only)"),
    max_size: Optional[float] = typer.Option(None, help="size budget in MiB for the int4 / int8 / source recipes "
                                             "(default: " + " / ".join(f"{f:.0%}" for f in DEFAULT_BUDGET.values())
                                             + f" of the fp32 size; source: {SOURCE_HEADROOM:.0%} over the size with every block kept)"),
    block_size: int = typer.Option(32, help="quantization block: inputs sharing a scale (int8, int4)"),
    calibrate: bool = typer.Option(False, help="activation-aware scaling before quantizing (int8, int4)"),
    lm_head_candidates: int = typer.Option(64, help="ort-cpu with --quant: the tied lm_head in two stages, an int4 "
                                           "scan and this many candidates re-scored from the stored rows where it "
                                           "pays (greedy and top-k <= this are exact); 0: one stage"),
    keep_embeddings_fp: bool = typer.Option(False, help="do not quantize the embedding / lm_head (nor Gemma 4's "
                                            "per-layer table)"),
    max_seq_len: int = typer.Option(4096, help="KV-cache length (clamped to the model's context)"),
    dump_ir: Optional[Path] = typer.Option(None, help="write the graph after each pass to this folder"),
    force: bool = typer.Option(False, help="replace an existing OUT"),
    text_only: bool = typer.Option(False, "--text-only", help="a multimodal checkpoint: the text decoder alone "
                                   "(no image or audio encoders; prompts are text)"),
    inline_functions: bool = typer.Option(False, "--inline-functions", help="generic: the project's functions "
                                          "inlined, a graph of standard ops for runtimes that do not inline them "
                                          "(OpenVINO)"),
) -> None:
    """Export a checkpoint to an artifact folder."""
    from gemma_export.export import export as run_export
    from gemma_export.targets import ExportOptions

    options = ExportOptions(target=target, dtype=dtype, quant=quant, block_size=block_size, calibrate=calibrate,
                            keep_embeddings_fp=keep_embeddings_fp, max_seq_len=max_seq_len, max_size_mib=max_size,
                            text_only=text_only, inline_functions=inline_functions,
                            lm_head_candidates=lm_head_candidates)
    progress = _Progress()
    try:
        manifest = run_export(source, out, options, force=force, dump_ir=dump_ir, progress=progress)
    finally:
        progress.close()
    if manifest.multimodal:
        typer.echo(_multimodal_note(manifest.multimodal, text_only), err=True)
    skipped = manifest.report.get("embedding", {}).get("skipped_towers") if manifest.embedding else None
    if skipped:
        typer.echo(f"note: a {manifest.family} checkpoint: exported the text embedder; its {' and '.join(skipped)} "
                   "tower(s) skipped (no exporter for them)", err=True)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    kind = f"embedding model of {manifest.embedding.dimensions} dimensions, " if manifest.embedding else ""
    typer.echo(f"wrote {out} ({kind}{manifest.family}, target {manifest.target}, {manifest.dtype}, "
               f"quant {manifest.quant['method']}, {size:.1f} MiB, {manifest.export_seconds} s)")


def _multimodal_note(section: dict, text_only: bool) -> str:
    """What an export of a multimodal checkpoint wrote, and which towers it skipped."""
    encoders = [f"the {m} encoder" for m in ("image", "audio") if m in section]
    note = f"note: a {section['model_type']} checkpoint: exported the text decoder" + "".join(
        f", {e}" for e in encoders)
    if section["skipped"]:
        note += (f"; its {' and '.join(section['skipped'])} tower(s) skipped"
                 + (" (--text-only)" if text_only else " (no exporter for them)"))
    return note


def _sampling(model, temperature, top_k, top_p) -> dict:
    """Explicit options win; else the checkpoint's generation_config; else greedy."""
    gen = model.manifest.generation_config or {}
    sample = gen.get("do_sample", False)
    return {
        "temperature": temperature if temperature is not None else (gen.get("temperature", 1.0) if sample else 0.0),
        "top_k": top_k if top_k is not None else (gen.get("top_k") if sample else None),
        "top_p": top_p if top_p is not None else (gen.get("top_p") if sample else None),
    }


@app.command()
def generate(
    artifact: Path = typer.Argument(..., help="artifact folder"),
    prompt: str = typer.Option(..., help="prompt text"),
    max_new_tokens: Optional[int] = typer.Option(None, help="default: 64, or what fits after a long prompt; "
                                                "more than fits is an error"),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy"),
    top_k: Optional[int] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the chat template"),
    backend: Optional[str] = BACKEND,
    device: Optional[str] = DEVICE,
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: every core)"),
    image: Optional[list[Path]] = typer.Option(None, "--image", help=IMAGE_HELP),
    audio: Optional[list[Path]] = typer.Option(None, "--audio", help=AUDIO_HELP),
    speculative: Optional[str] = SPECULATIVE,
) -> None:
    """Generate a continuation, streamed to stdout."""
    import gemma_runtime

    model = gemma_runtime.load(artifact, backend=backend, threads=threads, device=device)
    media = {"images": image or [], "audio": audio or []}
    text = model.chat_prompt([_user_message(model, prompt, media)]) if chat else prompt
    for piece in model.stream(text, max_new_tokens=max_new_tokens, seed=seed, speculative=speculative,
                              **_sampling(model, temperature, top_k, top_p), **media):
        typer.echo(piece, nl=False)
    typer.echo()


@app.command()
def embed(
    artifact: Path = typer.Argument(..., help="an embedding model's artifact folder"),
    text: list[str] = typer.Option(..., "--text", help="a text to embed (repeatable)"),
    prompt_name: Optional[str] = typer.Option(None, help="one of the model's prompts (query, document, ...) put "
                                              "before each text; default: the model's default prompt, if any"),
    dimensions: Optional[int] = typer.Option(None, help="keep the first N dimensions, normalized again "
                                             "(Matryoshka: EmbeddingGemma is trained at 768, 512, 256, 128)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: every core)"),
) -> None:
    """Print the texts' embeddings as JSON: {"model", "dimensions", "prompt_name", "data": [{"text", "embedding"}]}."""
    import gemma_runtime

    model = gemma_runtime.load(artifact, threads=threads)
    vectors = model.embed(list(text), prompt_name=prompt_name, dimensions=dimensions)
    typer.echo(json.dumps({"model": str(artifact), "dimensions": int(vectors.shape[1]), "prompt_name": prompt_name,
                           "data": [{"text": t, "embedding": v.tolist()} for t, v in zip(text, vectors)]}))


def _user_message(model, text: str, media: dict) -> dict:
    """A user turn whose media placeholders lie inside it (with none in the text: in front, as Gemma's
    chat templates put them)."""
    from gemma_runtime.chat import with_media_marks

    return {"role": "user", "content": with_media_marks(text, model.manifest, model.tokenizer, len(media["images"]),
                                                        len(media["audio"]))}


def _prompt_length(model, text: str, media: dict) -> int:
    """Tokens of a prompt with its media expanded (the media are decoded and encoded to know)."""
    if media["images"] or media["audio"]:
        return len(model.prepare(text, media["images"], media["audio"])[0])
    return len(model.tokenizer.encode(text))


@app.command()
def chat(
    artifact: Path = typer.Argument(..., help="artifact folder"),
    system: Optional[str] = typer.Option(None, help="system prompt (where the checkpoint's chat template puts it; "
                                         "the hand-written layout opens the first user turn with it)"),
    max_new_tokens: int = typer.Option(256),
    temperature: Optional[float] = typer.Option(None),
    top_k: Optional[int] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    backend: Optional[str] = BACKEND,
    device: Optional[str] = DEVICE,
    threads: Optional[int] = typer.Option(None),
    image: Optional[list[Path]] = typer.Option(None, "--image", help="an image file for the first message "
                                               "(repeatable); dropped with that turn when the context is full"),
    audio: Optional[list[Path]] = typer.Option(None, "--audio", help="a WAV file for the first message (repeatable)"),
) -> None:
    """Multi-turn chat on stdin/stdout; /exit or end of input quits."""
    import gemma_runtime

    model = gemma_runtime.load(artifact, backend=backend, threads=threads, device=device)
    if model.tokenizer is None:
        raise GemmaExportError(f"{artifact}: chat needs a tokenizer.model in the artifact")
    sampling = _sampling(model, temperature, top_k, top_p)
    history: list[dict] = []
    media = {"images": image or [], "audio": audio or []}  # the first user message's, while it is in history
    budget = model.max_seq_len - max_new_tokens
    if budget < 2:
        raise GemmaExportError(f"--max-new-tokens {max_new_tokens} leaves no room for a message in this artifact's "
                               f"context of {model.max_seq_len} tokens")
    while True:
        typer.echo("> ", nl=False)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        history.append(_user_message(model, line.rstrip("\n"), media) if not history else
                       {"role": "user", "content": line.rstrip("\n")})
        prefix = [{"role": "system", "content": system}] if system else []
        while _prompt_length(model, model.chat_prompt(prefix + history), media) > budget:
            if len(history) <= 1:
                raise GemmaExportError(f"the message alone is longer than the context ({budget} tokens left)")
            history = history[2:]  # drop the oldest user/model exchange, whole
            typer.echo("[context full: the oldest turn was dropped]"
                       + (" (with the images and audio)" if media["images"] or media["audio"] else ""), err=True)
            media = {"images": [], "audio": []}  # they were in the first turn
        answer = []
        for piece in model.stream(model.chat_prompt(prefix + history), max_new_tokens=max_new_tokens,
                                  seed=seed, **sampling, **media):
            answer.append(piece)
            typer.echo(piece, nl=False)
        typer.echo()
        history.append({"role": "assistant", "content": "".join(answer)})


@app.command()
def validate(
    artifact: Path = typer.Argument(..., help="artifact folder"),
    reference: Optional[Path] = typer.Option(None, help="checkpoint (HF folder, .gguf) or artifact; "
                                             "none: the embedded default model"),
    text: Optional[Path] = typer.Option(None, help="text file to evaluate (default: built-in prompts)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    max_rel_diff: Optional[float] = typer.Option(None, help="fp32: max |diff| / max |logit|"),
    min_top1: Optional[float] = typer.Option(None, help="minimum top-1 agreement"),
    bisect: bool = typer.Option(False, "--bisect", help="also export again from the --reference checkpoint, "
                                "comparing the graph with the reference after each group of passes, layer by "
                                "layer: a table and the first group, layer and node that leave tolerance"),
) -> None:
    """Compare an artifact's logits with a reference; exit 1 when a threshold fails."""
    from gemma_export.verify.validate import Thresholds, default_thresholds, validate as run_validate
    from gemma_runtime.manifest import read_manifest

    if bisect:
        from gemma_export.verify.pass_bisect import require_checkpoint
        require_checkpoint(artifact, reference)  # before the slow part
    thresholds = default_thresholds(read_manifest(artifact))
    thresholds = Thresholds(max_rel_diff if max_rel_diff is not None else thresholds.max_rel_diff,
                            min_top1 if min_top1 is not None else thresholds.min_top1)
    texts = None
    if text is not None:
        try:
            texts = [t for t in text.read_text().split("\n\n") if t.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise GemmaExportError(f"{text}: unreadable ({e})") from None
        if not texts:
            raise GemmaExportError(f"{text}: no text")
    report = run_validate(artifact, reference, texts, thresholds)
    rows = [("reference", report["reference"]), ("positions", report["positions"]),
            ("max |diff|", f"{report['max_abs_diff']:.3g} (max |logit| {report['max_abs_ref_logit']:.3g})"),
            ("mean |diff|", f"{report['mean_abs_diff']:.3g}"),
            ("top-1 agreement", f"{report['top1_agreement']:.4f} (decided positions {report['top1_agreement_decided']:.4f})"),
            ("top-5 agreement", f"{report['top5_agreement']:.4f}"), ("KL divergence", f"{report['kl_divergence']:.3g}"),
            ("perplexity", f"{report['perplexity']:.3f} (reference {report['reference_perplexity']:.3f})"),
            ("greedy tokens matched", f"{report['greedy_tokens_matched']}/{report['greedy_tokens_total']}")]
    for k, v in rows:
        typer.echo(f"{k:<22} {v}")
    typer.echo("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    if bisect:
        from gemma_export.verify.bisect_report import format_report
        from gemma_export.verify.pass_bisect import bisect as run_bisect

        progress = _Progress()
        try:
            report["bisect"] = run_bisect(artifact, reference, texts, progress)
        finally:
            progress.close()
        typer.echo(format_report(report["bisect"]))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise typer.Exit(1)


@app.command()
def inspect(
    artifact: Path = typer.Argument(..., help="artifact folder"),
    verify: bool = typer.Option(False, help="instead: hash each file again and compare it with the manifest's "
                                "size and sha256 (exit 2 unless all match)"),
) -> None:
    """Op counts, inputs and outputs, passes and sizes of an artifact; or, with --verify, its files
    checked against the manifest."""
    from gemma_export.describe import describe, verify as verify_files

    if not verify:
        typer.echo(describe(artifact))
        return
    checked = verify_files(artifact)
    for name, status in checked.items():
        typer.echo(f"{name:<28} {status}")
    bad = [name for name, status in checked.items() if status != "OK"]
    if bad:
        raise GemmaExportError(f"{artifact}: {len(bad)} of {len(checked)} files do not match the manifest: "
                               + ", ".join(f"{name} ({checked[name].split(' ')[0]})" for name in bad))


@app.command()
def bench(
    artifact: Path = typer.Argument(..., help="artifact folder"),
    prompt_tokens: int = typer.Option(128, help="prompt length (random ids, BOS first)"),
    new_tokens: int = typer.Option(128, help="tokens generated (greedy, no early stop)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: every core)"),
    backend: Optional[str] = BACKEND,
    device: Optional[str] = DEVICE,
    repeats: int = typer.Option(3, help="best of this many runs"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON"),
) -> None:
    """Prefill tok/s, time to first token, decode tok/s and peak RSS, measured in a fresh process."""
    from gemma_export.bench import format_table, measure

    result = measure(artifact, prompt_tokens, new_tokens, threads, backend, repeats, device)
    typer.echo(format_table([result]))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


@app.command("build-engine")
def build_engine(
    artifact: Path = typer.Argument(..., help="artifact folder exported with --target tensorrt"),
    max_batch: int = typer.Option(1, help="largest batch the engine runs"),
    opt_seq_len: Optional[int] = typer.Option(None, help="prompt length the prefill profile is tuned for "
                                              "(default: 128, or the maximum sequence length if shorter)"),
    compute_capability: Optional[str] = typer.Option(None, help="X.Y: build ahead of time with TensorRT-RTX for "
                                                     "this GPU architecture (default: this machine's GPU)"),
    max_media_items: int = typer.Option(4, help="images (or crops) or audio clips per encoder call, for the "
                                        "engines of a multimodal artifact's encoders"),
) -> None:
    """Build a TensorRT engine into the artifact (TensorRT with a GPU, else TensorRT-RTX ahead of time):
    the decoder's, and one per encoder of a multimodal artifact."""
    from gemma_export.emit import tensorrt_engine

    progress = _Progress()
    try:
        entry = tensorrt_engine.build(artifact, max_batch, opt_seq_len, compute_capability, progress, max_media_items)
    finally:
        progress.close()
    typer.echo(f"wrote {artifact / entry['file']} ({entry['library']} {entry['version']}, compute capability "
               f"{entry['compute_capability']}, batch <= {entry['max_batch']}, prefill tuned for "
               f"{entry['opt_seq_len']} tokens)")


@app.command()
def serve(
    artifact: Path = typer.Argument(..., help="artifact folder (any decoder or embedding artifact)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    max_batch: Optional[int] = typer.Option(None, help="KV-cache slots: requests generated together (default 8; 1 "
                                            "for targets generic and openvino, whose growing cache holds one "
                                            "sequence)"),
    max_queue: Optional[int] = typer.Option(None, help="requests waiting for a slot before 429 (default: 4 x --max-batch)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads per replica (default: every core)"),
    ray: bool = typer.Option(False, "--ray", help="deploy as Ray Serve replicas (RAY_ADDRESS's cluster, else a "
                             "local Ray) behind Ray's HTTP proxy"),
    replicas: int = typer.Option(1, help="Ray Serve replicas (with --ray)"),
    log_level: str = typer.Option("warning", help="what the runtime and uvicorn log: debug, info, warning or error"),
    api_key: Optional[str] = typer.Option(None, help="require `Authorization: Bearer KEY` on every route but "
                                          "/health (default: the environment's GEMMA_EXPORT_API_KEY, else open)"),
    max_body_mib: float = typer.Option(16, help="largest request body in MiB (413 beyond; images come as base64)"),
    cors_origin: Optional[list[str]] = typer.Option(None, help="a browser origin allowed to call the server "
                                                    "(repeat for several; default none)"),
    max_connections: Optional[int] = typer.Option(None, help="open connections at most, idle ones included (503 "
                                                  "beyond; default 1024)"),
    speculative: Optional[str] = typer.Option(None, help="speculative decoding while a single request is busy (same "
                                              "output): prompt-lookup, or prompt-lookup:k=4,n=3,min_n=1"),
) -> None:
    """An OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models, /tokenize,
    /detokenize, /health, /metrics) with continuous batching."""
    if max_queue is not None and max_batch is not None and max_queue < max_batch:
        raise GemmaExportError(f"--max-queue ({max_queue}) must be at least --max-batch ({max_batch})")
    if replicas != 1 and not ray:
        raise GemmaExportError("--replicas needs --ray")
    if ray and (api_key or cors_origin or max_connections):
        raise GemmaExportError("--api-key, --cors-origin and --max-connections are the standalone server's: with "
                               "--ray, put them in front of Ray's proxy")
    if ray and speculative:
        raise GemmaExportError("--speculative is the standalone server's (not yet with --ray)")
    if speculative:
        from gemma_runtime.speculative import drafter

        drafter(speculative)  # a clear error before anything loads
    if max_body_mib <= 0:
        raise GemmaExportError(f"--max-body-mib must be positive, got {max_body_mib:g}")
    if max_connections is not None and max_connections < 1:
        raise GemmaExportError(f"--max-connections must be at least 1, got {max_connections}")
    from gemma_runtime.logs import LOG_LEVELS

    if log_level not in LOG_LEVELS:
        raise GemmaExportError(f"--log-level {log_level!r}: one of {', '.join(LOG_LEVELS)}")
    if not (artifact / "manifest.json").is_file():
        raise GemmaExportError(f"{artifact}: not an artifact folder (no manifest.json)")
    extra = "ray" if ray else "serve"
    try:
        if ray:
            from gemma_runtime.ray_serve import run as run_server
        else:
            from gemma_runtime.server import DEFAULT_MAX_CONNECTIONS, serve as run_server
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        raise GemmaExportError(f"serving needs the [{extra}] extra ({e.name} is missing): "
                               f"pip install 'gemma-export[{extra}]'") from None
    typer.echo(f"serving {artifact} on http://{host}:{port}" + (f" (max batch {max_batch})" if max_batch else "")
               + (f" ({replicas} Ray Serve replicas)" if ray else ""), err=True)
    if ray:
        run_server(str(artifact.resolve()), host, port, replicas, max_batch or 8, max_queue, threads, log_level)
    else:
        run_server(artifact, host, port, max_batch, max_queue, threads, log_level, api_key,
                   int(max_body_mib * 2**20), cors_origin or (), max_connections or DEFAULT_MAX_CONNECTIONS,
                   speculative)


def main() -> None:
    from gemma_runtime.errors import RuntimeInputError

    try:
        app()
    except (GemmaExportError, RuntimeInputError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime":
            raise
        typer.echo("error: onnxruntime is not installed: pip install 'gemma-export[cpu]' "
                   "(or 'gemma-export[gpu]' for CUDA, in an environment without onnxruntime)", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
