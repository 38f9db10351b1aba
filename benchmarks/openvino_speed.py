"""OpenVINO against onnxruntime (issue 26): the `openvino` target's graph on its OpenVINO backend
and on onnxruntime (backend="ort"), beside our default `ort-cpu` target, on (a) the real Gemma 3
270M (the embedded default model) and (b) a Gemma-2B-shaped 4-layer random checkpoint
(benchmarks/checkpoint.py). Prefill tokens/s (128-token prompt), decode tokens/s (128 new
tokens), peak RSS, each in a fresh process, timed by gemma_export.bench's loop (batch 1, greedy,
best of --repeats after a warm-up); and how far the OpenVINO and onnxruntime logits of the same
graph are apart on the prompt (max |diff| / max |logit|).

Run: .venv/bin/python benchmarks/openvino_speed.py [--models gemma3-270m 2b-4l] [--repeats 3] [--reuse]
Writes benchmarks/results/openvino.json and prints a table per model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

# This file's name would shadow the openvino package: its folder goes last on the path, where
# benchmarks/checkpoint.py is still found.
BENCHMARKS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCHMARKS] + [str(BENCHMARKS)]
from checkpoint import gemma_2b_checkpoint  # noqa: E402

from gemma_export.bench import format_table, measure, random_prompt  # noqa: E402
from gemma_export.export import export  # noqa: E402
from gemma_export.targets import ExportOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench" / "openvino"
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("gemma3-270m", "2b-4l")
RUNS = (("openvino", "openvino"), ("openvino", "ort"), ("ort-cpu", "ort"))  # (target, backend)


def artifact(model: str, target: str, reuse: bool) -> Path:
    out = WORK / model / target
    if not (reuse and (out / "manifest.json").is_file()):
        print(f"  export {target} ...", flush=True)
        source = None if model == "gemma3-270m" else gemma_2b_checkpoint(WORK / "gemma-2b-4l", layers=4)
        export(source, out, ExportOptions(target=target, max_seq_len=512), force=True)
    return out


def agreement(folder: Path, prompt_tokens: int) -> dict:
    """The same graph's prompt logits on OpenVINO and on onnxruntime."""
    import gemma_runtime

    logits = {}
    for backend in ("openvino", "ort"):
        model = gemma_runtime.load(folder, backend=backend)
        ids = random_prompt(prompt_tokens, model.manifest.config["vocab_size"], model.manifest.tokens.bos)
        logits[backend] = model.logits(ids)
        del model
    diff = np.abs(logits["openvino"] - logits["ort"]).max()
    return {"max_abs_diff": float(diff), "relative": float(diff / np.abs(logits["ort"]).max()),
            "argmax_agree": float((logits["openvino"].argmax(-1) == logits["ort"].argmax(-1)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep artifacts already exported under .cache")
    args = parser.parse_args()
    report = {"host": {"cpus": os.cpu_count(), "machine": platform.machine(), "openvino": version("openvino"),
                       "onnxruntime": version("onnxruntime")}, "models": {}}
    for model in args.models:
        print(f"{model}:", flush=True)
        rows = []
        for target, backend in RUNS:
            folder = artifact(model, target, args.reuse)
            print(f"  bench {target} on {backend} ...", flush=True)
            try:
                result = measure(folder, args.prompt_tokens, args.new_tokens, repeats=args.repeats, backend=backend)
            except Exception as e:  # one run failing must not lose the others' figures
                result = {"error": str(e)}
            rows.append({"name": f"{target} on {backend}", **result})
        parity = agreement(WORK / model / "openvino", args.prompt_tokens)
        report["models"][model] = {"rows": rows, "openvino_vs_ort_same_graph": parity}
        print(format_table(rows))
        print(f"  OpenVINO vs onnxruntime, same graph, {args.prompt_tokens}-token prompt: max |diff| "
              f"{parity['max_abs_diff']:.2e} ({parity['relative']:.1e} of max |logit|), argmax agrees at "
              f"{parity['argmax_agree']:.0%} of positions", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "openvino.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'openvino.json'}")


if __name__ == "__main__":
    main()
