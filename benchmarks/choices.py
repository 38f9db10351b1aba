"""`n` choices of one prompt through the engine, in one run: the prompt prefilled once (Engine.copies,
what the server does for `n` > 1) against n independent requests of the same prompt submitted at
once, alternating. Reports the prompt tokens fed, the time until every choice has its first token,
and the wall time until all have finished.

    python benchmarks/choices.py ARTIFACT [--n 4] [--prompt-tokens 512] [--new-tokens 8] [--rounds 2]

ARTIFACT: an in-place export (ort-cpu), e.g. the real Gemma 3 270M exported with gemma-export.
Writes benchmarks/results/choices.json and prints a table."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gemma_runtime  # noqa: E402
from gemma_export.texts import PROMPTS  # noqa: E402
from gemma_runtime.engine import Engine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "choices.json"


def one_round(engine: Engine, prompt: list[int], n: int, new_tokens: int, shared: bool) -> dict:
    metrics = engine.metrics
    fed = metrics.prompt_tokens
    first = engine.request(prompt, new_tokens, temperature=1.0, seed=0)
    seeds = list(range(1, n))
    others = engine.copies(first, seeds) if shared else [engine.request(prompt, new_tokens, temperature=1.0, seed=s)
                                                         for s in seeds]
    start = time.perf_counter()
    for request in [first, *others]:
        engine.submit(request)
    while engine.step():
        continue
    return {"fed": metrics.prompt_tokens - fed, "all_first_token_s": max(r.first_token_s for r in [first, *others]),
            "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    # prefix reuse off: a finished round's rows would otherwise hand the next round its prompt
    engine = Engine(gemma_runtime.load(args.artifact, threads=args.threads), max_batch=args.n, reuse_prefixes=False)
    text = " ".join(PROMPTS)
    prompt = engine.model.tokenizer.encode(text * (1 + 4 * args.prompt_tokens // max(len(text), 1)))
    prompt = prompt[:args.prompt_tokens]
    runs: dict[str, list[dict]] = {"independent": [], "prefilled once": []}
    for _ in range(args.rounds):
        for name, shared in (("independent", False), ("prefilled once", True)):
            runs[name].append(one_round(engine, prompt, args.n, args.new_tokens, shared))
    rows = [{"mode": name, "n": args.n, "prompt_tokens": len(prompt), "fed": rounds[-1]["fed"],
             "all_first_token_s_p50": statistics.median(r["all_first_token_s"] for r in rounds),
             "wall_s_p50": statistics.median(r["wall_s"] for r in rounds)} for name, rounds in runs.items()]
    ratio = rows[0]["all_first_token_s_p50"] / rows[1]["all_first_token_s_p50"]
    print(f"{'mode':<16}{'n':>3}{'prompt':>8}{'fed':>7}{'all TTFT p50 s':>16}{'wall p50 s':>12}")
    for row in rows:
        print(f"{row['mode']:<16}{row['n']:>3}{row['prompt_tokens']:>8}{row['fed']:>7}"
              f"{row['all_first_token_s_p50']:>16.2f}{row['wall_s_p50']:>12.2f}")
    print(f"time to every choice's first token: {ratio:.1f}x lower prefilled once")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"artifact": str(args.artifact), "rounds": args.rounds, "rows": rows,
                                   "ttft_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
