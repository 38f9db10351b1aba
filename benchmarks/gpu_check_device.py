"""The GPU check's measuring half, run on the lent GPU machine by benchmarks/gpu_check.sh (and on the
CPU by the suite, to prove it): parity of tiny ort-cuda artifacts against fp32 references computed
where they were exported, and the speed of the larger ones. Imports gemma_runtime and numpy only:
that machine has no exporter, no transformers and no network.

    python benchmarks/gpu_check_device.py PLAN.json OUT.json [--device cuda]

PLAN.json (written by `gpu_check.py prepare`): {"onnxruntime": version expected, "parity": [{"name",
"artifact", "reference"}], "speed": [{"name", "artifact", "zero_files": {file: size}}], "prompt":
{"whole": ids, "stepwise": ids, "prefill": n}, "speed_settings": {...}}; paths relative to the plan.
A speed artifact travels without its weights: zero_files are recreated as zeros of their size (the
kernels' time does not depend on the values)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime

import gemma_runtime


def parity_row(entry: dict, root: Path, prompts: dict, device: str) -> dict:
    model = gemma_runtime.load(root / entry["artifact"], threads=None, device=device)
    ref = np.load(root / entry["reference"])
    whole = model.logits(prompts["whole"])
    backend, ids, prefill = model.backend, prompts["stepwise"], prompts["prefill"]
    backend.reserve(1)
    steps = [backend.step([ids[:prefill]], [0], [prefill])[:, 0]]
    steps += [backend.step([[ids[t]]], [t], [1])[:, 0] for t in range(prefill, len(ids))]
    row = {"name": entry["name"], "dtype": model.manifest.dtype, "device": backend.device}
    for key, ours, expected in (("whole", whole, ref["whole"]), ("stepwise", np.concatenate(steps), ref["stepwise"])):
        row[f"{key}_relative"] = float(np.abs(ours - expected).max() / np.abs(expected).max())
        row[f"{key}_top1"] = float((ours.argmax(-1) == expected.argmax(-1)).mean())
    return row


def speed_row(entry: dict, root: Path, settings: dict, device: str) -> dict:
    folder = root / entry["artifact"]
    for name, size in entry.get("zero_files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            with open(path, "wb") as f:
                f.truncate(size)
    model = gemma_runtime.load(folder, threads=None, device=device)
    backend, vocab = model.backend, model.manifest.config["vocab_size"]
    rng = np.random.default_rng(0)
    prompt_len, new, rows = settings["prompt_tokens"], settings["new_tokens"], settings["batch"]
    prompt = rng.integers(3, vocab, prompt_len)
    row = {"name": entry["name"], "dtype": model.manifest.dtype, "quant": model.manifest.quant["method"],
           "device": backend.device, "prompt_tokens": prompt_len}
    for batch in (1, rows):
        backend.reserve(batch)
        prefill_s = []
        for r in range(batch):
            start = time.perf_counter()
            logits = backend.step(prompt[None], [0], [prompt_len], first_row=r)[:, 0]
            prefill_s.append(time.perf_counter() - start)
        tokens = np.full(batch, int(logits[0].argmax()))
        past = np.full(batch, prompt_len)
        backend.step(tokens[:, None], past, np.ones(batch))  # warm-up of the decode shape
        past += 1
        start = time.perf_counter()
        for _ in range(new):
            tokens = backend.step(tokens[:, None], past, np.ones(batch))[:, 0].argmax(-1)
            past += 1
        elapsed = time.perf_counter() - start
        if batch == 1:
            row["prefill_tokens_per_s"] = prompt_len / statistics.median(prefill_s[1:] or prefill_s)
            row["decode_tokens_per_s"] = new / elapsed
        else:
            row[f"batch{batch}_tokens_per_s"] = batch * new / elapsed
    return row


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(cell(row.get(c, "")) for c in columns) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    root = args.plan.parent
    if onnxruntime.__version__ != plan["onnxruntime"]:
        sys.exit(f"onnxruntime {onnxruntime.__version__} from {onnxruntime.__file__}, the plan is for "
                 f"{plan['onnxruntime']}: put its folder first on PYTHONPATH")
    result = {"onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers(),
              "device": args.device, "host": os.uname().nodename, "parity": [], "speed": []}
    for entry in plan["parity"]:
        result["parity"].append(parity_row(entry, root, plan["prompt"], args.device))
        print(json.dumps(result["parity"][-1]), flush=True)
    for entry in plan["speed"]:
        result["speed"].append(speed_row(entry, root, plan["speed_settings"], args.device))
        print(json.dumps(result["speed"][-1]), flush=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result["parity"], ["name", "dtype", "device", "whole_relative", "whole_top1", "stepwise_relative",
                                   "stepwise_top1"]))
    batch = f"batch{plan['speed_settings']['batch']}_tokens_per_s"
    print(table(result["speed"], ["name", "dtype", "quant", "device", "prefill_tokens_per_s", "decode_tokens_per_s",
                                  batch]))


if __name__ == "__main__":
    main()
