"""Low precision side by side, one run: for each precision and quantization recipe of our ort-cpu
export, llama.cpp running the GGUF itself (the 270M only: its embedded Q4_K_M) and onnxruntime-genai's
`-p int8` and `-p int4` (`int4_algo_config=k_quant_mixed`: int8 lm_head and sensitive layers, its mix)
builds of the same checkpoint: size, prefill and decode tokens/s (same thread count, 128-token
prompt), and, teacher-forced over the built-in evaluation text (gemma_export.texts.PROMPTS, disjoint
from the calibration text the recipes measure on; random ids for the tokenizer-less checkpoint)
against our fp32 export: top-1 agreement, KL(fp32 || ours) per position and perplexity; fp16 and
bf16 also run a 2048-token prompt (prefill and 8 decode steps) for inf/NaN.
Models: the real Gemma 3 270M (our exports from the embedded default GGUF, `source` keeping its blocks;
genai from the HF folder that benchmarks/decode.py makes from the same GGUF), the Gemma-2B-shaped
4-layer random bf16 checkpoint, and a Gemma 4 E2B-shaped 5-layer one (benchmarks/gemma4.py's: its
per-layer table is a recipe unit).

Goals (README): the int4 recipe top-1 >= 96%, perplexity within 3% of fp32, size <= 30% of fp32; int8
top-1 >= 98% at <= 55%; source top-1 >= 98% at <= 1.4x the GGUF; every decode >= llama.cpp's and the
int4 recipe >= 1.2x onnxruntime-genai's k_quant_mixed.

Run: .venv/bin/python benchmarks/precision.py [--models gemma3-270m 2b-4l gemma4-e2b-5l] [--repeats 2] [--reuse]
       [--llama-python /path/to/venv/bin/python]   (llama-cpp-python built from source)
       [--keep-rows]   (keep the earlier rows this run does not measure; each row says when it ran)
Writes benchmarks/results/precision.json (after every row) and prints a table per model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import WORK, bench_python, peer, source_folder  # noqa: E402

import gemma_runtime  # noqa: E402
from gemma_export.bench import OneSequence, format_table, measure  # noqa: E402
from gemma_export.export import export  # noqa: E402
from gemma_export.targets import ExportOptions  # noqa: E402
from gemma_export.quantization.method import QuantMethod  # noqa: E402
from gemma_export.verify.compare import compare  # noqa: E402
from gemma_export.verify.validate import prompt_ids  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"
MODELS = ("gemma3-270m", "2b-4l", "gemma4-e2b-5l")
OURS = {  # name -> export options; max_size_of_fp32: --max-size as a fraction of the fp32 export's size
    "fp32": {},
    "fp16": {"dtype": "fp16"},
    "bf16": {"dtype": "bf16"},
    "int8": {"quant": "int8"},
    "int8 at 55%": {"quant": "int8", "max_size_of_fp32": 0.55},
    "int8-uniform": {"quant": "int8-uniform"},
    "int4": {"quant": "int4"},
    "int4-one-stage": {"quant": "int4", "lm_head_candidates": 0},
    "int8-one-stage": {"quant": "int8", "lm_head_candidates": 0},
    "int4 at 25%": {"quant": "int4", "max_size_of_fp32": 0.25},
    "int4 at 20%": {"quant": "int4", "max_size_of_fp32": 0.20},
    "int4-uniform": {"quant": "int4-uniform"},
    "int4-uniform calibrated": {"quant": "int4-uniform", "calibrate": True},
    "source": {"quant": "source"},  # a quantized GGUF only
    "source-uniform": {"quant": "source-uniform"},
}
GENAI = {"int8": [], "int4": ["algo_config=k_quant_mixed"]}  # -p precision -> builder extra options
LONG_PROMPT = 2048
COLUMNS = [
    ("size MiB", "size_mib", "{:.0f}"),
    ("mix", "mix", "{}"),
    ("of fp32", "size_of_fp32", "{:.0%}"),
    ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
    ("vs llama.cpp", "decode_vs_llama", "{:.2f}x"),
    ("top-1", "top1_agreement", "{:.2%}"),
    ("KL", "kl_divergence", "{:.2e}"),
    ("ppl", "perplexity", "{:.3f}"),
    ("2048 finite", "long_prompt_finite", "{}"),
    ("export s", "export_s", "{:.0f}"),
]


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "tokenizer.model") / 2**20


def agreement(logits_of, reference: list[np.ndarray], sequences: list[list[int]]) -> dict:
    """Top-1 agreement, mean KL and perplexity of `logits_of(i, ids)` against the reference logits."""
    rows = [compare(logits_of(i, ids), ref, ids) for i, (ids, ref) in enumerate(zip(sequences, reference))]
    positions = sum(r["positions"] for r in rows)
    targets = sum(r["positions"] - 1 for r in rows)
    return {"positions": positions, "top1_agreement": sum(r["top1_agree"] for r in rows) / positions,
            "kl_divergence": sum(r["kl_sum"] for r in rows) / positions,
            "perplexity": float(np.exp(sum(r["nll_ours"] for r in rows) / targets)),
            "reference_perplexity": float(np.exp(sum(r["nll_ref"] for r in rows) / targets))}


def long_prompt_finite(artifact: Path) -> bool:
    model = gemma_runtime.load(artifact)
    cfg = model.manifest.config
    ids = [model.manifest.tokens.bos] + np.random.default_rng(0).integers(4, cfg["vocab_size"],
                                                                                LONG_PROMPT - 1).tolist()
    sequence = OneSequence(model.backend)
    logits = [sequence.prefill(ids)]
    for _ in range(8):
        logits.append(sequence.decode(int(logits[-1].argmax())))
    return bool(all(np.isfinite(x).all() for x in logits))


def our_row(name: str, model: str, out: Path, source: Path | None, reference, sequences, args,
            fp32_mib: float | None = None) -> dict:
    options = dict(OURS[name])
    if "max_size_of_fp32" in options:
        options["max_size_mib"] = options.pop("max_size_of_fp32") * fp32_mib
    dtype = options.get("dtype", "fp32")
    row = {"name": f"ours {name}", "engine": "ours", "precision": name}
    if not (args.reuse and (out / "manifest.json").is_file()):
        print(f"  export {name} ...", flush=True)
        t = time.perf_counter()
        export(source, out, ExportOptions(target="ort-cpu", **options), force=True)
        row["export_s"] = time.perf_counter() - t
    row["size_mib"] = folder_mib(out)
    print(f"  bench {name} ...", flush=True)
    row.update({k: v for k, v in measure(out, args.prompt_tokens, args.new_tokens, repeats=args.repeats).items()
                if k in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_rss_mib")})
    if name != "fp32":
        print(f"  agreement {name} ...", flush=True)
        ours = gemma_runtime.load(out)
        row.update(agreement(lambda i, ids: ours.logits(ids), reference, sequences))
        row["report"] = json.loads((out / "manifest.json").read_text())["report"]
        choices = row["report"].get("quantization", {}).get("choices", {})
        row["mix"] = " ".join(f"{w}:{n}" for w, n in sorted(Counter(choices.values()).items()))
    if dtype != "fp32":
        row["long_prompt_finite"] = long_prompt_finite(out)
    return row


def genai_row(precision: str, model: str, python: Path, reference, sequences, args) -> dict:
    extra = GENAI[precision]
    folder = WORK / "precision" / model / f"genai-{precision}"
    label = " ".join([precision, *(e.split("=")[1] for e in extra)])
    row = {"name": f"onnxruntime-genai {label}", "engine": "onnxruntime-genai", "precision": precision}
    if not (args.reuse and (folder / "genai_config.json").is_file()):
        print(f"  build onnxruntime-genai {precision} ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        built = peer(python, "build-genai", str(source_folder(model)), str(folder), "--precision", precision,
                     *(["--extra", *extra] if extra else []))
        if "error" in built:
            return {**row, "error": built["error"]}
        row["export_s"] = time.perf_counter() - t
    shutil.rmtree(folder / ".cache", ignore_errors=True)
    row["size_mib"] = folder_mib(folder)
    print(f"  bench onnxruntime-genai {precision} ...", flush=True)
    speed = peer(python, "run-genai", str(folder), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens",
                 str(args.new_tokens), "--repeats", str(args.repeats), "--threads", str(os.cpu_count() or 1))
    if "error" in speed:
        return {**row, "error": speed["error"]}
    row.update({k: speed[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_rss_mib")})
    print(f"  agreement onnxruntime-genai {precision} ...", flush=True)
    ids_file, logits_dir = folder / "ids.json", folder / "logits"
    ids_file.write_text(json.dumps(sequences))
    done = peer(python, "logits-genai", str(folder), str(ids_file), str(logits_dir))
    if "error" in done:
        return {**row, "error": done["error"]}
    row.update(agreement(lambda i, ids: np.load(logits_dir / f"{i}.npy"), reference, sequences))
    shutil.rmtree(logits_dir)
    return row


def llama_row(llama_python: str, gguf: Path, reference, sequences, args) -> dict:
    """llama.cpp (llama-cpp-python) running the GGUF itself, with the same thread count."""
    row = {"name": "llama.cpp " + gguf.stem.split("-")[-1].upper(), "engine": "llama.cpp",
           "size_mib": gguf.stat().st_size / 2**20}
    print("  bench llama.cpp ...", flush=True)
    speed = peer(llama_python, "run-llama", str(gguf), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens",
                 str(args.new_tokens), "--repeats", str(args.repeats), "--threads", str(os.cpu_count() or 1))
    if "error" in speed:
        return {**row, "error": speed["error"]}
    row.update({k: speed[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_rss_mib")})
    print("  agreement llama.cpp ...", flush=True)
    folder = WORK / "precision" / "llama"
    ids_file, logits_dir = folder / "ids.json", folder / "logits"
    folder.mkdir(parents=True, exist_ok=True)
    ids_file.write_text(json.dumps(sequences))
    done = peer(llama_python, "logits-llama", str(gguf), str(ids_file), str(logits_dir), "--threads",
                str(os.cpu_count() or 1))
    if "error" in done:
        return {**row, "error": done["error"]}
    row.update(agreement(lambda i, ids: np.load(logits_dir / f"{i}.npy"), reference, sequences))
    shutil.rmtree(logits_dir)
    return row


def profile_decode(artifact: Path, steps: int = 32) -> dict:
    """onnxruntime's profile of `steps` decode steps of our artifact: milliseconds per step by op type,
    and the step's wall time (the rest is Python and binding outside onnxruntime)."""
    import onnxruntime as ort

    from gemma_runtime.backends import ort_inplace

    original = ort_inplace.create_session

    def profiled(path, threads, device="cpu"):
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(artifact.parent / "decode-profile")
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    ort_inplace.create_session = profiled
    try:
        model = gemma_runtime.load(artifact)
    finally:
        ort_inplace.create_session = original
    cfg = model.manifest.config
    ids = [model.manifest.tokens.bos] + np.random.default_rng(1).integers(4, cfg["vocab_size"], 127).tolist()
    sequence = OneSequence(model.backend)
    token = int(sequence.prefill(ids).argmax())
    t = time.perf_counter()
    for _ in range(steps):
        token = int(sequence.decode(token).argmax())
    wall_ms = (time.perf_counter() - t) * 1e3 / steps
    trace = json.loads(Path(model.backend.session.end_profiling()).read_text())
    # events are relative to the session's start; keep the decode steps (the last `steps` runs)
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])[-steps:]
    begin = runs[0]["ts"]
    by_op = Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["ts"] >= begin and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3 / steps
    run_ms = sum(r["dur"] for r in runs) / 1e3 / steps
    return {"step_wall_ms": wall_ms, "step_in_onnxruntime_ms": run_ms,
            "outside_onnxruntime_ms": wall_ms - run_ms,
            "ms_per_step_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


def one_model(model: str, args, python: Path | None, report: dict) -> None:
    root = WORK / "precision" / model
    source = None if model == "gemma3-270m" else _source(model)  # None: the embedded default
    rows = report["models"].setdefault(model, {"rows": []})["rows"]
    earlier = list(rows) if args.keep_rows else []
    rows.clear()
    reference_dir = root / "fp32"
    first = our_row("fp32", model, reference_dir, source, None, None, args)
    fp32 = gemma_runtime.load(reference_dir)
    sequences = prompt_ids(fp32, None, fp32.manifest.config["vocab_size"])
    reference = [fp32.logits(ids) for ids in sequences]
    first.update({"top1_agreement": 1.0, "kl_divergence": 0.0, "positions": sum(map(len, sequences)),
                  "perplexity": agreement(lambda i, ids: reference[i], reference, sequences)["perplexity"]})
    rows.append(first)
    names = [n for n in OURS if n != "fp32" and n in args.precisions
             and (not QuantMethod.parse(OURS[n].get("quant", "none")).keeps_source_blocks or source is None)]
    for name in names:
        rows.append(_guarded(lambda: our_row(name, model, root / name.replace(" ", "-").replace("%", ""), source,
                                             reference, sequences, args, first["size_mib"]), f"ours {name}"))
        _save(report)
    if args.llama_python and source is None:
        from gemma_export.checkpoints.default_model import default_gguf_path
        rows.append(_guarded(lambda: llama_row(args.llama_python, default_gguf_path(), reference, sequences, args),
                             "llama.cpp"))
        _save(report)
    for precision in GENAI if python is not None else ():
        rows.append(_guarded(lambda: genai_row(precision, model, python, reference, sequences, args),
                             f"onnxruntime-genai {precision}"))
        _save(report)
    measured = {r["name"] for r in rows}
    for r in rows:
        r["measured"] = time.strftime("%Y-%m-%d")
    rows[:] = [next(n for n in rows if n["name"] == r["name"]) if r["name"] in measured else r for r in earlier] \
        + [r for r in rows if r["name"] not in {e["name"] for e in earlier}]
    llama = next((r for r in rows if r.get("engine") == "llama.cpp" and "error" not in r), None)
    for row in rows:
        if "size_mib" in row:
            row["size_of_fp32"] = row["size_mib"] / first["size_mib"]
        if llama and "decode_tokens_per_s" in row:
            row["decode_vs_llama"] = row["decode_tokens_per_s"] / llama["decode_tokens_per_s"]
    ours4 = next((r for r in rows if r["name"] == "ours int4" and "error" not in r), None)
    theirs4 = next((r for r in rows if r["name"].startswith("onnxruntime-genai int4") and "error" not in r), None)
    if ours4 and theirs4:
        verdict = {"decode_vs_genai_int4": ours4["decode_tokens_per_s"] / theirs4["decode_tokens_per_s"],
                   "top1_ours_minus_genai": ours4["top1_agreement"] - theirs4["top1_agreement"]}
        verdict["met"] = verdict["decode_vs_genai_int4"] >= 1.2 and verdict["top1_ours_minus_genai"] >= 0
        report["models"][model]["int4_target"] = verdict
        if not verdict["met"]:
            print("  profiling our int4 decode ...", flush=True)
            report["models"][model]["int4_decode_profile"] = profile_decode(root / "int4")
    _save(report)


def _source(model: str) -> Path:
    if model == "gemma4-e2b-5l":
        from gemma4 import E2B, WORK as GEMMA4_WORK, checkpoint, e2b_layer_types

        return checkpoint(GEMMA4_WORK / "e2b-5l", dict(E2B, num_hidden_layers=5, layer_types=e2b_layer_types(5),
                                                        num_kv_shared_layers=2))
    return source_folder(model)


def _guarded(fn, name: str) -> dict:
    try:
        return fn()
    except Exception as e:  # one precision failing must not lose the others' figures
        return {"name": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def _save(report: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=float) + "\n")


def tables(report: dict) -> str:
    out = []
    for model, entry in report["models"].items():
        out += [f"{model}:", format_table(entry["rows"], COLUMNS)]
        out += [f"  {r['name']}: {r['error']}" for r in entry["rows"] if "error" in r]
        if "int4_target" in entry:
            v = entry["int4_target"]
            out.append(f"  int4 decode vs onnxruntime-genai int4: {v['decode_vs_genai_int4']:.2f}x, top-1 "
                       f"{v['top1_ours_minus_genai']:+.2%} (target >= 1.2x at >= 0: {'met' if v['met'] else 'missed'})")
        if "int4_decode_profile" in entry:
            p = entry["int4_decode_profile"]
            out.append(f"  our int4 decode step: {p['step_wall_ms']:.2f} ms wall, {p['step_in_onnxruntime_ms']:.2f} ms "
                       f"in onnxruntime; by op (ms/step):")
            out += [f"    {op:<40} {ms:.3f}" for op, ms in list(p["ms_per_step_by_op"].items())[:10]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", choices=list(OURS), default=list(OURS))
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true", help="our exports only")
    parser.add_argument("--llama-python", help="a python with llama-cpp-python (built from source) for llama.cpp's rows")
    parser.add_argument("--reuse", action="store_true", help="reuse exports and peer builds already made")
    parser.add_argument("--keep-rows", action="store_true", help="keep the earlier rows this run does not measure")
    args = parser.parse_args()
    python = None if args.no_peers else bench_python()
    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    report.update({"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
                   "target": "ort-cpu"})
    report.setdefault("models", {})
    for model in args.models:
        print(f"{model}:", flush=True)
        one_model(model, args, python, report)
        print(tables({"models": {model: report["models"][model]}}), flush=True)
    print(tables(report))


if __name__ == "__main__":
    main()
