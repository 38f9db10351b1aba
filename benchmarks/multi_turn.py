"""Multi-turn chat through the engine, with and without prefix reuse, in one run: 8 conversations at
once, 6 turns each, every one opening with the same system prompt; each turn resends the whole
history (as chat clients do) plus a new user message, and the answer joins the history. Reports time
to first token per turn (p50/p90 of turn 1 and of the later turns) and the prompt tokens fed or
reused. With --llama-server, the same conversations (the same token ids, greedy, as many slots as
conversations) also go to llama.cpp's llama-server on the default model's GGUF (Q4_K_M) through its
/completion endpoint, with its prompt cache (cache_prompt, its default); each server runs alone.

Goal (issue: the OpenAI API real clients use): p50 time to first token of the later turns >= 3x
lower with reuse than without.

    python benchmarks/multi_turn.py [ARTIFACT] [--conversations 8] [--turns 6] [--answer-tokens 32]
        [--llama-server PATH [--cache-reuse N]]

ARTIFACT defaults to the real Gemma 3 270M exported (ort-cpu fp32) under .cache/bench/multi_turn.
Writes benchmarks/results/multi_turn.json and prints a table."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from decode import WORK  # noqa: E402
from servers import llama_server_command, running  # noqa: E402

import gemma_runtime  # noqa: E402
from gemma_export.bench import format_table  # noqa: E402
from gemma_export.texts import PROMPTS  # noqa: E402
from gemma_runtime.engine import Engine  # noqa: E402
from gemma_runtime.manifest import read_manifest  # noqa: E402
from gemma_runtime.tokenizer import Tokenizer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "multi_turn.json"
LLAMA_CONTEXT = 2048  # per llama-server slot; six turns' history stays well within it
COLUMNS = [("TTFT turn 1 p50 ms", "ttft_turn1_p50_ms", "{:.0f}"),
           ("p90", "ttft_turn1_p90_ms", "{:.0f}"), ("TTFT later turns p50 ms", "ttft_later_p50_ms", "{:.0f}"),
           ("p90", "ttft_later_p90_ms", "{:.0f}"), ("prompt tokens fed", "prompt_tokens_fed", "{}"),
           ("reused", "prompt_tokens_reused", "{}")]
SYSTEM = ("You are a careful assistant for a team of engineers. Answer briefly and precisely, name your "
          "assumptions, prefer plain words, and say when you do not know. ") * 3


def user_turn(tokenizer: Tokenizer, index: int, turn: int) -> list[int]:
    return tokenizer.encode(f" ({index}.{turn}) {PROMPTS[(index + turn) % len(PROMPTS)]}", add_bos=False)


def conversation(engine: Engine, index: int, turns: int, answer_tokens: int, ttft: list[list[float]]) -> None:
    tokenizer = engine.model.tokenizer
    history = tokenizer.encode(SYSTEM)
    for turn in range(turns):
        history += user_turn(tokenizer, index, turn)
        request = engine.submit(engine.request(history, max_new_tokens=answer_tokens)).result()
        ttft[turn].append(request.first_token_s)
        history += request.tokens


def run_together(target, arguments: list[tuple]) -> None:
    """target(*args) for each args at once, one thread each (the conversations), until all return."""
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def summary(ttft: list[list[float]], fed: int, reused: int) -> dict:
    later = [s for per_turn in ttft[1:] for s in per_turn]
    ms = lambda xs, q: statistics.quantiles(xs, n=10, method="inclusive")[q - 1] * 1e3  # noqa: E731
    return {"ttft_turn1_p50_ms": ms(ttft[0], 5), "ttft_turn1_p90_ms": ms(ttft[0], 9),
            "ttft_later_p50_ms": ms(later, 5), "ttft_later_p90_ms": ms(later, 9),
            "ttft_per_turn_p50_ms": [statistics.median(t) * 1e3 for t in ttft],
            "prompt_tokens_fed": fed, "prompt_tokens_reused": reused}


def run(artifact: Path, reuse: bool, conversations: int, turns: int, answer_tokens: int) -> dict:
    engine = Engine(gemma_runtime.load(artifact), max_batch=conversations, reuse_prefixes=reuse).start()
    try:
        ttft: list[list[float]] = [[] for _ in range(turns)]
        run_together(conversation, [(engine, i, turns, answer_tokens, ttft) for i in range(conversations)])
        return {"name": f"ours, reuse {'on' if reuse else 'off'}",
                **summary(ttft, engine.metrics.prompt_tokens, engine.metrics.cached_prompt_tokens)}
    finally:
        engine.stop()


def llama_turn(url: str, history: list[int], answer_tokens: int, cache_reuse: int) -> tuple[float, list[int], dict]:
    """One streamed /completion on token ids: (time to first token, the answer's ids, its timings)."""
    body = {"prompt": history, "n_predict": answer_tokens, "temperature": 0, "stream": True, "cache_prompt": True,
            "n_cache_reuse": cache_reuse}
    post = urllib.request.Request(url + "/completion", json.dumps(body).encode(),
                                  {"Content-Type": "application/json"})
    start, first, answer, timings = time.perf_counter(), None, [], {}
    with urllib.request.urlopen(post, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("tokens"):
                first = first or time.perf_counter() - start
                answer += chunk["tokens"]
            timings = chunk.get("timings", timings)
    return first, answer, timings


def llama_conversation(url: str, tokenizer: Tokenizer, index: int, turns: int, answer_tokens: int,
                       cache_reuse: int, ttft: list[list[float]], counts: list[tuple[int, int]]) -> None:
    history = tokenizer.encode(SYSTEM)
    for turn in range(turns):
        history += user_turn(tokenizer, index, turn)
        first, answer, timings = llama_turn(url, history, answer_tokens, cache_reuse)
        ttft[turn].append(first)
        counts.append((timings.get("prompt_n", 0), timings.get("cache_n", 0)))
        history += answer


def run_llama(server: str, artifact: Path, conversations: int, turns: int, answer_tokens: int,
              cache_reuse: int) -> dict:
    tokenizer = Tokenizer.in_folder(artifact, read_manifest(artifact).tokens.bos)
    command = llama_server_command(server, conversations, LLAMA_CONTEXT) + ["--cache-reuse", str(cache_reuse)]
    with running(command) as url:
        llama_turn(url, tokenizer.encode("Hello"), 4, cache_reuse)  # warm-up
        ttft: list[list[float]] = [[] for _ in range(turns)]
        counts: list[tuple[int, int]] = []
        run_together(llama_conversation, [(url, tokenizer, i, turns, answer_tokens, cache_reuse, ttft, counts)
                                          for i in range(conversations)])
    return {"name": f"llama-server Q4_K_M, prompt cache (--cache-reuse {cache_reuse})",
            **summary(ttft, sum(c[0] for c in counts), sum(c[1] for c in counts))}


def default_artifact() -> Path:
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    out = WORK / "multi_turn" / "gemma3-270m-fp32"
    if not (out / "manifest.json").is_file():
        export(None, out, ExportOptions(max_seq_len=2048), force=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, nargs="?")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary (built from source)")
    parser.add_argument("--cache-reuse", type=int, default=256,
                        help="llama-server's --cache-reuse (min chunk reused by KV shifting; 0 = prefix only)")
    args = parser.parse_args()
    artifact = args.artifact or default_artifact()
    rows = [run(artifact, reuse, args.conversations, args.turns, args.answer_tokens) for reuse in (False, True)]
    ratio = rows[0]["ttft_later_p50_ms"] / rows[1]["ttft_later_p50_ms"]
    if args.llama_server:
        rows.append(run_llama(args.llama_server, artifact, args.conversations, args.turns, args.answer_tokens,
                              args.cache_reuse))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"artifact": str(artifact), "rows": rows, "later_turns_ttft_ratio": ratio},
                                  indent=1))
    print(format_table(rows, COLUMNS))
    print(f"later turns: {ratio:.2f}x lower time to first token with reuse")


if __name__ == "__main__":
    main()
