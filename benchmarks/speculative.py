"""Speculative decoding with prompt lookup (runtime/speculative.py) on the real Gemma 3 270M (issue
23): prompts that quote themselves (a code edit that renames a variable in a function it is given;
a summary that repeats the names of its text), greedy, plain decode against speculative decode for
k = 1..8 in interleaved rounds (medians; whether the tokens are plain decoding's, else the first
that differs: a k-token call's logits may differ from a one-token call's in the last bits, which
can flip a near tie), the acceptance rate (accepted
drafts / drafted tokens) and the verify cost: a call feeding the last token and k drafts (k + 1
tokens) against a one-token call, at the same cache length, both after the prompt.

Decode tok/s: (new tokens - 1) / (generate time - the prompt's time to first token), the time to
first token measured alone (max_new_tokens 1) in each round.

Needs the precision benchmark's exports of the 270M (benchmarks/precision.py: the int4 recipe and
fp32, target ort-cpu); they are exported here when missing.

Run: .venv/bin/python benchmarks/speculative.py [--rounds 3] [--artifacts int4 fp32] [--new-tokens 128] [--work W]
Writes benchmarks/results/speculative.json and prints a table per artifact and prompt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import WORK, source_folder  # noqa: E402

from gemma_export.bench import format_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXPORTS = {"int4": {"quant": "int4"}, "fp32": {}}  # as benchmarks/precision.py names them
KS = range(1, 9)

CODE = '''def moving_average(values, window):
    """The mean of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    totals = []
    running = 0.0
    for index, value in enumerate(values):
        running += value
        if index >= window:
            running -= values[index - window]
        if index >= window - 1:
            totals.append(running / window)
    return totals
'''
STORY = ("Marguerite Okonkwo founded the Riverside Lantern Cooperative in 1998 with her brother Tobias "
         "Okonkwo and their neighbour Henrietta Vasquez-Lindqvist. The Riverside Lantern Cooperative "
         "first sold hand-blown glass lanterns at the Millbrook Saturday Market; Henrietta Vasquez-Lindqvist "
         "designed the lanterns, Tobias Okonkwo built the kilns, and Marguerite Okonkwo kept the books. "
         "In 2011 the Riverside Lantern Cooperative opened a workshop on Alder Street in Millbrook, and "
         "by 2020 it employed forty glassblowers trained by Henrietta Vasquez-Lindqvist herself.")
PROMPTS = {
    "code edit": "Rewrite this Python function, renaming the variable `running` to `window_sum` and `totals` "
                 "to `averages`. Reply with the whole function only.\n\n" + CODE,
    "summary": "Summarize the following text in three sentences, using the full names of every person and "
               "place.\n\n" + STORY,
}


def artifact(name: str, work: Path) -> Path:
    folder = work / "precision" / "gemma3-270m" / name
    if not (folder / "manifest.json").is_file():
        from gemma_export.export import export
        from gemma_export.targets import ExportOptions

        print(f"exporting the 270M ({name}) to {folder} ...", flush=True)
        export(source_folder("gemma3-270m"), folder, ExportOptions(target="ort-cpu", **EXPORTS[name]), force=True)
    return folder


def timed_generate(model, ids: list[int], new_tokens: int, speculative=None) -> tuple[float, list[int]]:
    start = time.perf_counter()
    result = model.generate(ids, max_new_tokens=new_tokens, speculative=speculative)
    return time.perf_counter() - start, result.token_ids


def verify_cost(model, ids: list[int], repeats: int = 7) -> dict[int, float]:
    """k -> median time of a call feeding k + 1 tokens / median time of a one-token call, at the
    cache length after the prompt."""
    backend = model.backend
    backend.reserve(1)
    backend.step([ids], [0], [len(ids)])
    past = [len(ids)]

    def call(width: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            backend.step([ids[:width]], past, [width], [list(range(width))])
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    one = call(1)
    return {k: call(k + 1) / one for k in KS}


def bench(name: str, prompt_name: str, args) -> dict:
    import gemma_runtime

    model = gemma_runtime.load(artifact(name, args.work))
    text = model.chat_prompt([{"role": "user", "content": PROMPTS[prompt_name]}])
    ids = model.encode(text)
    plain_tokens = model.generate(ids, max_new_tokens=args.new_tokens).token_ids  # warm-up
    configs = {"plain": None, **{f"k={k}": f"prompt-lookup:k={k},n={args.n},min_n={args.min_n}" for k in KS}}
    times: dict[str, list[float]] = {c: [] for c in configs}
    acceptance: dict[str, float] = {}
    diverged: dict[str, int] = {}  # config -> first token that differs from plain decoding's
    ttft = []
    for _ in range(args.rounds):
        ttft.append(timed_generate(model, ids, 1)[0])
        for config, spec in configs.items():
            seconds, tokens = timed_generate(model, ids, args.new_tokens, spec)
            if tokens != plain_tokens:  # a verify call's logits may differ from a one-token call's in the last bits
                diverged[config] = next((i for i, (a, b) in enumerate(zip(tokens, plain_tokens)) if a != b),
                                        min(len(tokens), len(plain_tokens)))
            times[config].append(seconds)
            if spec is not None:
                acceptance[config] = model.speculation_stats.acceptance
                calls = model.speculation_stats.verifies
    first = statistics.median(ttft)
    new = len(plain_tokens)
    decode = {c: (new - 1) / (statistics.median(t) - first) for c, t in times.items()}  # lengths equal (no stop)
    costs = verify_cost(model, ids)
    rows = [{"name": "plain", "tok_s": decode["plain"], "speedup": 1.0}]
    for k in KS:
        config = f"k={k}"
        rows.append({"name": config, "tok_s": decode[config], "speedup": decode[config] / decode["plain"],
                     "acceptance": acceptance[config], "verify_cost": costs[k],
                     "identical": "yes" if config not in diverged else f"from {diverged[config]}"})
    print(f"\n{name}, {prompt_name}: {len(ids)} prompt tokens, {new} new tokens (greedy), time to first "
          f"token {first * 1e3:.0f} ms; k=8's last run {calls} verify calls")
    print(format_table(rows, [("decode tok/s", "tok_s", "{:.1f}"), ("x plain", "speedup", "{:.2f}"),
                              ("acceptance", "acceptance", "{:.2f}"),
                              ("verify cost (k+1 tokens / 1)", "verify_cost", "{:.2f}"),
                              ("tokens = plain", "identical", "{}")]))
    return {"artifact": name, "prompt": prompt_name, "prompt_tokens": len(ids), "new_tokens": new,
            "ttft_s": first, "rounds": args.rounds, "diverged": diverged, "rows": rows, "times_s": times,
            "text": model.tokenizer.decode(plain_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--artifacts", nargs="+", default=["int4", "fp32"], choices=list(EXPORTS))
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--n", type=int, default=3, help="prompt lookup's longest n-gram")
    parser.add_argument("--min-n", type=int, default=1, help="prompt lookup's shortest n-gram")
    parser.add_argument("--work", type=Path, default=WORK, help="where benchmarks/precision.py keeps its exports")
    parser.add_argument("--json", type=Path, default=RESULTS / "speculative.json")
    args = parser.parse_args()
    results = [bench(name, prompt_name, args) for name in args.artifacts for prompt_name in args.prompts]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"n": args.n, "min_n": args.min_n, "results": results}, indent=1,
                                    default=lambda x: float(x) if isinstance(x, np.floating) else str(x)))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
