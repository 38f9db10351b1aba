"""Decode and prefill speed of benchmarks/precision.py's engines on the 270M in interleaved rounds:
each engine runs once per round (its own process, same threads, 128-token prompt, 64 new tokens),
so a drift of this shared machine's speed touches every engine alike; the table gives each
engine's median over the rounds and the median of its per-round ratio to llama.cpp and to
onnxruntime-genai's int4 k_quant_mixed build.

Needs precision.py's exports (run it first) and, for the peers, the same pythons it uses.

Run: .venv/bin/python benchmarks/precision_rounds.py [--rounds 3] [--llama-python P] [--precisions int4 source ...]
Writes benchmarks/results/precision_rounds.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import WORK, bench_python, peer  # noqa: E402

from gemma_export.bench import format_table, measure  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "precision_rounds.json"
FOLDER = WORK / "precision" / "gemma3-270m"
LLAMA, GENAI = "llama.cpp Q4_K_M", "onnxruntime-genai int4 k_quant_mixed"
COLUMNS = [("decode tok/s", "decode", "{:.1f}"), ("prefill tok/s", "prefill", "{:.0f}"),
           ("decode vs llama.cpp", "vs_llama", "{:.2f}x"), ("decode vs genai int4", "vs_genai", "{:.2f}x"),
           ("decode per round", "rounds", "{}")]


def one(name: str, args, python: Path | None) -> dict:
    common = ["--prompt-tokens", "128", "--new-tokens", "64", "--repeats", "1", "--threads", str(os.cpu_count() or 1)]
    if name == LLAMA:
        from gemma_export.checkpoints.default_model import default_gguf_path
        return peer(args.llama_python, "run-llama", str(default_gguf_path()), *common)
    if name == GENAI:
        return peer(python, "run-genai", str(FOLDER / "genai-int4"), *common)
    return measure(FOLDER / name, 128, 64, repeats=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+",
                        default=["fp32", "int8", "int8-uniform", "int4", "int4-uniform", "source", "source-uniform"])
    parser.add_argument("--llama-python", help="a python with llama-cpp-python (built from source)")
    args = parser.parse_args()
    python = bench_python()
    engines = [f"ours {p}" for p in args.precisions] + ([LLAMA] if args.llama_python else []) \
        + ([GENAI] if (FOLDER / "genai-int4").is_dir() else [])
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.rounds):
        for engine in engines:
            print(f"  round {r + 1}: {engine} ...", flush=True)
            result = one(engine.removeprefix("ours "), args, python)
            if "error" in result:
                sys.exit(f"error: {engine}: {result['error']}")
            runs[engine].append(result)
    rows = []
    for engine, results in runs.items():
        decode = [x["decode_tokens_per_s"] for x in results]
        row = {"name": engine, "decode": statistics.median(decode),
               "prefill": statistics.median(x["prefill_tokens_per_s"] for x in results),
               "rounds": " ".join(f"{d:.1f}" for d in decode), "decode_per_round": decode}
        for key, peer_name in (("vs_llama", LLAMA), ("vs_genai", GENAI)):
            if peer_name in runs:
                row[key] = statistics.median(d / p["decode_tokens_per_s"] for d, p in zip(decode, runs[peer_name]))
        rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2) + "\n")
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
