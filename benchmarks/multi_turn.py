"""Multi-turn chat through the engine, with and without prefix reuse, in one run: 8 conversations at
once, 6 turns each, every one opening with the same system prompt; each turn resends the whole
history (as chat clients do) plus a new user message, and the answer joins the history. Reports time
to first token per turn (p50 of turn 1 and of the later turns) and the prompt tokens fed or reused.

Goal (issue: the OpenAI API real clients use): p50 time to first token of the later turns >= 3x
lower with reuse than without.

    python benchmarks/multi_turn.py [ARTIFACT] [--conversations 8] [--turns 6] [--answer-tokens 32]

ARTIFACT defaults to the real Gemma 3 270M exported (ort-cpu fp32) under .cache/bench/multi_turn.
Writes benchmarks/results/multi_turn.json and prints a table."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from decode import WORK  # noqa: E402

import gemma_runtime  # noqa: E402
from gemma_export.texts import PROMPTS  # noqa: E402
from gemma_runtime.engine import Engine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "multi_turn.json"
SYSTEM = ("You are a careful assistant for a team of engineers. Answer briefly and precisely, name your "
          "assumptions, prefer plain words, and say when you do not know. ") * 3


def conversation(engine: Engine, index: int, turns: int, answer_tokens: int, ttft: list[list[float]]) -> None:
    tokenizer = engine.model.tokenizer
    history = tokenizer.encode(SYSTEM)
    for turn in range(turns):
        history += tokenizer.encode(f" ({index}.{turn}) {PROMPTS[(index + turn) % len(PROMPTS)]}", add_bos=False)
        request = engine.submit(engine.request(history, max_new_tokens=answer_tokens)).result()
        ttft[turn].append(request.first_token_s)
        history += request.tokens


def run(artifact: Path, reuse: bool, conversations: int, turns: int, answer_tokens: int) -> dict:
    engine = Engine(gemma_runtime.load(artifact), max_batch=conversations, reuse_prefixes=reuse).start()
    try:
        ttft: list[list[float]] = [[] for _ in range(turns)]
        threads = [threading.Thread(target=conversation, args=(engine, i, turns, answer_tokens, ttft))
                   for i in range(conversations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        later = [s for per_turn in ttft[1:] for s in per_turn]
        return {"reuse": reuse, "ttft_turn1_p50_ms": statistics.median(ttft[0]) * 1e3,
                "ttft_later_p50_ms": statistics.median(later) * 1e3,
                "ttft_per_turn_p50_ms": [statistics.median(t) * 1e3 for t in ttft],
                "prompt_tokens_fed": engine.metrics.prompt_tokens,
                "prompt_tokens_reused": engine.metrics.cached_prompt_tokens}
    finally:
        engine.stop()


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
    args = parser.parse_args()
    artifact = args.artifact or default_artifact()
    rows = [run(artifact, reuse, args.conversations, args.turns, args.answer_tokens) for reuse in (False, True)]
    ratio = rows[0]["ttft_later_p50_ms"] / rows[1]["ttft_later_p50_ms"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"artifact": str(artifact), "rows": rows, "later_turns_ttft_ratio": ratio},
                                  indent=1))
    print("prefix reuse | TTFT turn 1 p50 ms | TTFT later turns p50 ms | per turn p50 ms | prompt tokens fed | reused")
    for r in rows:
        print(f"{'on' if r['reuse'] else 'off'} | {r['ttft_turn1_p50_ms']:.0f} | {r['ttft_later_p50_ms']:.0f} | "
              f"{', '.join(f'{x:.0f}' for x in r['ttft_per_turn_p50_ms'])} | {r['prompt_tokens_fed']} | "
              f"{r['prompt_tokens_reused']}")
    print(f"later turns: {ratio:.2f}x lower time to first token with reuse")


if __name__ == "__main__":
    main()
