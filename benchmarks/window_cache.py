"""Window-sized caches for sliding layers (target `onnx`) against full-length ones, side by side on
the real Gemma 3 270M (15 of its 18 layers slide, window 512): KV-cache bytes, prefill and decode
tokens/s and peak RSS at a short and a long prompt, and whether greedy generation after a prompt
longer than the window is the same token for token.

The full-length artifact is the same export with the `onnx` target's ring_caches fact switched off
(its table entry replaced within this process), so the two differ only in the sliding layers' caches.
Each measurement runs in its own process (gemma_export.bench.measure).

Run: .venv/bin/python benchmarks/window_cache.py [--max-seq-len 4096] [--long 2048] [--repeats 2]
Writes benchmarks/results/window_cache.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

import gemma_runtime
from gemma_export.bench import format_table, measure
from gemma_export.export import export
from gemma_export import targets
from gemma_export.targets import ExportOptions
from gemma_runtime.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench" / "window_cache"
RESULTS = ROOT / "benchmarks" / "results"
MiB = 2**20


def build(folder: Path, max_seq_len: int, ring: bool, reuse: bool) -> Path:
    if reuse and (folder / "manifest.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    saved = targets.TARGETS["onnx"]
    targets.TARGETS["onnx"] = dataclasses.replace(saved, ring_caches=ring)
    try:
        export(None, folder, ExportOptions(target="onnx", max_seq_len=max_seq_len))
    finally:
        targets.TARGETS["onnx"] = saved
    return folder


def cache_mib(folder: Path) -> float:
    """Bytes of every cache buffer at batch 1, from the manifest."""
    return sum(b.nbytes(1) for b in read_manifest(folder).kv_cache.buffers) / MiB


def greedy(folder: Path, prompt: list[int], new_tokens: int) -> list[int]:
    return gemma_runtime.load(folder).generate(prompt, max_new_tokens=new_tokens).token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--long", type=int, default=2048, help="the long prompt's tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="reuse the two exports when present")
    args = parser.parse_args()
    folders = {name: build(WORK / name, args.max_seq_len, name == "ring", args.reuse) for name in ("ring", "full")}
    rows = []
    for prompt_tokens in (128, args.long):
        for name, folder in folders.items():  # interleaved: the two sides see the same machine
            row = measure(folder, prompt_tokens=prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats)
            row.update(name=f"{name}, prompt {prompt_tokens}", cache_mib=cache_mib(folder))
            rows.append(row)
            print(format_table(rows[-1:]), flush=True)  # progress
    vocab = read_manifest(folders["ring"]).config["vocab_size"]
    prompt = [2] + list(np.random.default_rng(0).integers(4, vocab, args.long - 1))
    tokens = {name: greedy(folder, prompt, 32) for name, folder in folders.items()}
    same = tokens["ring"] == tokens["full"]
    columns = [("KV cache MiB", "cache_mib", "{:.1f}"),
               ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"), ("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
               ("peak RSS MiB", "peak_rss_mib", "{:.0f}")]
    print(format_table(rows, columns))
    print(f"greedy 32 tokens after a {args.long}-token prompt identical: {same}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "window_cache.json"
    out.write_text(json.dumps({"max_seq_len": args.max_seq_len, "rows": rows, "greedy_identical": same,
                               "greedy_tokens": tokens}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
