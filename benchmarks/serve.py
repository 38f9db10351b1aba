"""Serving under load, one run: our server (`gemma-export serve`, continuous batching, --max-batch 16)
on the real Gemma 3 270M at several precisions, and llama.cpp's own `llama-server` with continuous
batching (-np 16 -cb) on the same GGUF, each driven by 1, 4 and 16 concurrent streaming clients
through the OpenAI chat API: total generated tokens/s, p50/p99 time to first token and inter-token
latency. Each server runs alone with every core; the clients send the same prompts (built-in text)
with greedy decoding and a fixed max_tokens; each prompt starts with its own number, so no two requests
share a prefix (llama-server would reuse a cached prefix).

Goals (issue: serve it): at 16 clients, total decode throughput >= 4x one client's and ahead of
llama-server's with a recipe at least as faithful (top-1 from benchmarks/precision.py); p99 time to
first token at 16 clients within 5x of one client's.

Run: .venv/bin/python benchmarks/serve.py [--llama-server PATH] [--precisions fp32 int8 int4]
       [--clients 1 4 16] [--requests-per-client 4] [--max-tokens 64]
Writes benchmarks/results/serve.json and prints a table. Our exports: benchmarks/precision.py's where it made them, else made under .cache/bench/serve.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from decode import WORK  # noqa: E402
from servers import llama_server_command, ours_command, running  # noqa: E402

from gemma_export.bench import format_table  # noqa: E402
from gemma_export.texts import PROMPTS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
QUANTS = {"fp32": "none", "int8": "int8", "int4": "int4", "source": "source"}
COLUMNS = [("clients", "clients", "{}"), ("requests", "requests", "{}"), ("tok/s", "tokens_per_s", "{:.1f}"),
           ("x 1 client", "vs_one_client", "{:.2f}x"), ("TTFT p50 ms", "ttft_p50_ms", "{:.0f}"),
           ("TTFT p99 ms", "ttft_p99_ms", "{:.0f}"), ("ITL p50 ms", "itl_p50_ms", "{:.1f}"),
           ("ITL p99 ms", "itl_p99_ms", "{:.1f}"), ("errors", "errors", "{}")]


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    stamps = []
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
    if not stamps:
        return {"ttft": None, "gaps": [], "pieces": 0}
    return {"ttft": stamps[0] - start, "gaps": list(np.diff(stamps)), "pieces": len(stamps)}


def load(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=600, max_retries=0)
    # numbered, so that no request shares a prefix with another (llama-server reuses cached prefixes)
    prompts = [f"({i + 1}) {PROMPTS[i % len(PROMPTS)]}" for i in range(clients * per_client)]
    start = time.perf_counter()
    results, errors = [], 0
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(one_request, client, model, p, max_tokens) for p in prompts]:
            try:
                results.append(future.result())
            except Exception:  # counted; a benchmark reports them rather than stopping
                errors += 1
    wall = time.perf_counter() - start
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    pieces = sum(r["pieces"] for r in results)
    pct = lambda xs, q: float(np.percentile(xs, q) * 1e3) if xs else None  # noqa: E731
    return {"clients": clients, "requests": len(prompts), "errors": errors, "tokens_per_s": pieces / wall,
            "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99), "itl_p50_ms": pct(gaps, 50),
            "itl_p99_ms": pct(gaps, 99)}


def ours(precision: str, args) -> tuple[list[str], str]:
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    made = WORK / "precision" / "gemma3-270m" / precision  # benchmarks/precision.py's export, if there
    out = made if (made / "manifest.json").is_file() else WORK / "serve" / precision
    if not (out / "manifest.json").is_file():
        print(f"  export {precision} ...", flush=True)
        export(None, out, ExportOptions(quant=QUANTS[precision], max_seq_len=args.context), force=True)
    return ours_command(out, args.max_batch), out.name


def llama(server: str, args) -> tuple[list[str], str]:
    return llama_server_command(server, args.max_batch, args.context), "gemma"


def run_server(name: str, command: list[str], model: str, args) -> list[dict]:
    rows = []
    with running(command) as url:
        load(url, model, 1, 1, 8)  # warm-up
        for clients in args.clients:
            print(f"  {name}: {clients} clients ...", flush=True)
            rows.append({"name": name, **load(url, model, clients, args.requests_per_client, args.max_tokens)})
    one = next((r for r in rows if r["clients"] == 1), None)
    for r in rows:
        if one and one["tokens_per_s"]:
            r["vs_one_client"] = r["tokens_per_s"] / one["tokens_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", choices=list(QUANTS), default=["fp32", "int8", "int4"])
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary (built from source)")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=1024, help="context per sequence")
    args = parser.parse_args()
    rows = []
    for precision in args.precisions:
        command, model = ours(precision, args)
        rows += run_server(f"ours {precision}", command, model, args)
    if args.llama_server:
        command, model = llama(args.llama_server, args)
        rows += run_server("llama-server Q4_K_M", command, model, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"max_tokens": args.max_tokens, "max_batch": args.max_batch, "rows": rows},
                                  indent=2, default=float) + "\n")
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
