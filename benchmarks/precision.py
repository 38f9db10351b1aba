"""Low precision side by side (issue 5): for each precision of our ort-cpu export (fp32, fp16, bf16,
int8, int8 calibrated, int4, int4 calibrated) and onnxruntime-genai's `-p int8` and `-p int4`
builds of the same checkpoint: size, prefill and decode tokens/s (gemma_export.bench, 128-token
prompt), and, teacher-forced over the built-in prompts (gemma_export.texts.PROMPTS; random ids for
the tokenizer-less checkpoint) against our fp32 export: top-1 agreement, KL(fp32 || ours) per
position and perplexity; fp16 and bf16 are also run on a 2048-token prompt (prefill and 8 decode steps) for inf/NaN.
Models: the real Gemma 3 270M (our exports from the embedded default, genai from the HF folder that
benchmarks/decode.py makes from the same GGUF) and the Gemma-2B-shaped 4-layer random checkpoint.

Target: our int4 decode >= 1.2x onnxruntime-genai's int4 at equal or better agreement; where it is
missed, onnxruntime's profile of our int4 decode steps is printed (time per op type, and the share
of each step spent outside onnxruntime).

Run: .venv/bin/python benchmarks/precision.py [--models gemma3-270m 2b-4l] [--repeats 2] [--reuse]
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
from gemma_export.bench import format_table, measure  # noqa: E402
from gemma_export.export import export  # noqa: E402
from gemma_export.passes.context import ExportOptions  # noqa: E402
from gemma_export.validate import compare, prompt_ids  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"
MODELS = ("gemma3-270m", "2b-4l")
OURS = {  # name -> (dtype, quant, calibrate)
    "fp32": ("fp32", "none", False),
    "fp16": ("fp16", "none", False),
    "bf16": ("bf16", "none", False),
    "int8": ("fp32", "int8", False),
    "int8 calibrated": ("fp32", "int8", True),
    "int4": ("fp32", "int4", False),
    "int4 calibrated": ("fp32", "int4", True),
}
GENAI = ("int8", "int4")
LONG_PROMPT = 2048
COLUMNS = [
    ("size MiB", "size_mib", "{:.0f}"),
    ("of fp32", "size_of_fp32", "{:.0%}"),
    ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
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
    logits = [model.backend.prefill([ids])]
    for _ in range(8):
        logits.append(model.backend.decode(np.array([int(logits[-1][0].argmax())])))
    return bool(all(np.isfinite(x).all() for x in logits))


def our_row(name: str, model: str, out: Path, source: Path | None, reference, sequences, args) -> dict:
    dtype, quant, calibrate = OURS[name]
    row = {"name": f"ours {name}", "engine": "ours", "precision": name}
    if not (args.reuse and (out / "manifest.json").is_file()):
        print(f"  export {name} ...", flush=True)
        t = time.perf_counter()
        export(source, out, ExportOptions(target="ort-cpu", dtype=dtype, quant=quant, calibrate=calibrate),
               force=True)
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
    if dtype != "fp32":
        row["long_prompt_finite"] = long_prompt_finite(out)
    return row


def genai_row(precision: str, model: str, python: Path, reference, sequences, args) -> dict:
    folder = WORK / "precision" / model / f"genai-{precision}"
    row = {"name": f"onnxruntime-genai {precision}", "engine": "onnxruntime-genai", "precision": precision}
    if not (args.reuse and (folder / "genai_config.json").is_file()):
        print(f"  build onnxruntime-genai {precision} ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        built = peer(python, "build-genai", str(source_folder(model)), str(folder), "--precision", precision)
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


def profile_decode(artifact: Path, steps: int = 32) -> dict:
    """onnxruntime's profile of `steps` decode steps of our artifact: milliseconds per step by op type,
    and the step's wall time (the rest is Python and binding outside onnxruntime)."""
    import onnxruntime as ort

    from gemma_runtime.backends import ort_inplace

    original = ort_inplace.create_session

    def profiled(path, threads):
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
    token = int(model.backend.prefill([ids])[0].argmax())
    t = time.perf_counter()
    for _ in range(steps):
        token = int(model.backend.decode(np.array([token]))[0].argmax())
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
    source = None if model == "gemma3-270m" else source_folder(model)  # None: the embedded default
    rows = report["models"].setdefault(model, {"rows": []})["rows"]
    rows.clear()
    reference_dir = root / "fp32"
    first = our_row("fp32", model, reference_dir, source, None, None, args)
    fp32 = gemma_runtime.load(reference_dir)
    sequences = prompt_ids(fp32, None, fp32.manifest.config["vocab_size"])
    reference = [fp32.logits(ids) for ids in sequences]
    first.update({"top1_agreement": 1.0, "kl_divergence": 0.0, "positions": sum(map(len, sequences)),
                  "perplexity": agreement(lambda i, ids: reference[i], reference, sequences)["perplexity"]})
    rows.append(first)
    for name in [n for n in OURS if n != "fp32" and n in args.precisions]:
        rows.append(_guarded(lambda: our_row(name, model, root / name.replace(" ", "-"), source, reference,
                                             sequences, args), f"ours {name}"))
        _save(report)
    for precision in GENAI if python is not None else ():
        rows.append(_guarded(lambda: genai_row(precision, model, python, reference, sequences, args),
                             f"onnxruntime-genai {precision}"))
        _save(report)
    for row in rows:
        if "size_mib" in row:
            row["size_of_fp32"] = row["size_mib"] / first["size_mib"]
    ours4 = next((r for r in rows if r["name"] == "ours int4" and "error" not in r), None)
    theirs4 = next((r for r in rows if r["name"] == "onnxruntime-genai int4" and "error" not in r), None)
    if ours4 and theirs4:
        verdict = {"decode_vs_genai_int4": ours4["decode_tokens_per_s"] / theirs4["decode_tokens_per_s"],
                   "top1_ours_minus_genai": ours4["top1_agreement"] - theirs4["top1_agreement"]}
        verdict["met"] = verdict["decode_vs_genai_int4"] >= 1.2 and verdict["top1_ours_minus_genai"] >= 0
        report["models"][model]["int4_target"] = verdict
        if not verdict["met"]:
            print("  profiling our int4 decode ...", flush=True)
            report["models"][model]["int4_decode_profile"] = profile_decode(root / "int4")
    _save(report)


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
    parser.add_argument("--reuse", action="store_true", help="reuse exports and peer builds already made")
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
