"""Generation speed of an artifact: prefill tokens/s, time to first token, decode tokens/s, peak RSS.

Measured in a fresh process (`python -m gemma_export.bench ARTIFACT --json`) so that the peak RSS
is the model's own. Imports only gemma_runtime and numpy (never torch), and `time_generation`
takes plain callables so the benchmarks time peer engines with the same loop.

Definitions (batch 1, greedy, exactly `new_tokens` generated, end-of-sequence ignored):
  prefill      one forward pass over the prompt; prefill tokens/s = prompt tokens / its time
  TTFT         prefill plus choosing the first new token
  decode       the other new_tokens - 1 forward passes, one token each, with argmax;
               decode tokens/s = (new_tokens - 1) / their time
Each figure is the best of `repeats` runs, after an untimed warm-up (a prefill and a few steps).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gemma_export.errors import GemmaExportError
from gemma_runtime.backends.protocol import Backend

SEED = 1234
FIRST_ORDINARY_ID = 4  # skip pad, eos, bos, unk
WARMUP_STEPS = 4

Prefill = Callable[[list[int]], np.ndarray]  # prompt ids -> last-position logits [vocab]
Decode = Callable[[int], np.ndarray]  # one token -> its logits [vocab]


def random_prompt(n: int, vocab_size: int, bos: int, seed: int = SEED) -> list[int]:
    """BOS then n - 1 random ordinary ids (the same ids for every engine given the same seed)."""
    rng = np.random.default_rng(seed)
    return [bos] + rng.integers(FIRST_ORDINARY_ID, vocab_size, n - 1).tolist()


class OneSequence:
    """One sequence through a backend's step call: the prompt, then one token at a time."""

    def __init__(self, backend: Backend):
        self.backend, self.past = backend, 0

    def prefill(self, ids: list[int]) -> np.ndarray:
        """[vocab] logits of the prompt's last token, in a new cache row."""
        self.backend.reserve(1)
        self.past = len(ids)
        return self.backend.step([ids], [0], [len(ids)])[0, 0]

    def decode(self, token: int) -> np.ndarray:
        logits = self.backend.step([[token]], [self.past], [1])[0, 0]
        self.past += 1
        return logits


def time_generation(prefill: Prefill, decode: Decode, prompt: list[int], new_tokens: int,
                    repeats: int = 3) -> dict:
    """Times prefill, the first token and the decode loop; best of `repeats` after a warm-up."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 (one from the prefill, at least one decode step)")
    best = {"prefill_s": float("inf"), "ttft_s": float("inf"), "decode_s": float("inf")}
    tokens: list[int] = []
    for run in range(repeats + 1):
        t0 = time.perf_counter()
        logits = prefill(prompt)
        t1 = time.perf_counter()
        token = int(np.argmax(logits))
        t2 = time.perf_counter()
        tokens = [token]
        for _ in range(new_tokens - 1 if run else min(new_tokens - 1, WARMUP_STEPS)):
            token = int(np.argmax(decode(token)))
            tokens.append(token)
        t3 = time.perf_counter()
        if run == 0:
            continue  # warm-up: first-run allocations, prepacking, thread pool start
        best["prefill_s"] = min(best["prefill_s"], t1 - t0)
        best["ttft_s"] = min(best["ttft_s"], t2 - t0)
        best["decode_s"] = min(best["decode_s"], t3 - t2)
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "prefill_tokens_per_s": len(prompt) / best["prefill_s"],
        "ttft_ms": best["ttft_s"] * 1e3,
        "decode_tokens_per_s": (new_tokens - 1) / best["decode_s"],
        **best,
        "generated": tokens,
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_here(artifact: Path, prompt_tokens: int = 128, new_tokens: int = 128, threads: int | None = None,
                 backend: str | None = None, repeats: int = 3, device: str | None = None) -> dict:
    """The measurement in this process (peak RSS includes whatever the process held before)."""
    import gemma_runtime
    from gemma_runtime.errors import RuntimeInputError

    if prompt_tokens < 1 or new_tokens < 2 or repeats < 1:
        raise RuntimeInputError("need prompt_tokens >= 1, new_tokens >= 2 (one from the prefill, at least "
                                "one decode step) and repeats >= 1")
    t0 = time.perf_counter()
    model = gemma_runtime.load(artifact, backend=backend, threads=threads, device=device)
    load_s = time.perf_counter() - t0
    model.require_decoder()  # an embedding model's speed: benchmarks/embed.py
    manifest = model.manifest
    if prompt_tokens + new_tokens > model.max_seq_len:
        raise RuntimeInputError(f"{prompt_tokens} + {new_tokens} tokens exceed the artifact's maximum "
                                f"sequence length {model.max_seq_len}")
    prompt = random_prompt(prompt_tokens, manifest.config["vocab_size"], manifest.tokens.bos)
    sequence = OneSequence(model.backend)
    result = time_generation(sequence.prefill, sequence.decode, prompt, new_tokens, repeats)
    return {"artifact": str(artifact), "target": manifest.target, "dtype": manifest.dtype,
            "quant": manifest.quant["method"], "backend": backend or manifest.execution.backends[0], "threads": threads,
            "load_s": load_s, **result, "peak_rss_mib": peak_rss_mib()}


def measure(artifact: Path, prompt_tokens: int = 128, new_tokens: int = 128, threads: int | None = None,
            backend: str | None = None, repeats: int = 3, device: str | None = None) -> dict:
    """`measure_here` in a fresh Python process, so the peak RSS is the model's alone."""
    cmd = [sys.executable, "-m", "gemma_export.bench", str(artifact), "--prompt-tokens", str(prompt_tokens),
           "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--json"]
    for flag, value in (("--threads", threads), ("--backend", backend), ("--device", device)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GemmaExportError(f"benchmark of {artifact} failed: {tail.removeprefix('error: ')}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


COLUMNS = [  # (header, key, format)
    ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"),
    ("TTFT ms", "ttft_ms", "{:.1f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
]


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]] = COLUMNS,
                 label: str = "name") -> str:
    """A plain-text table; each row's `label` key (else its target) names it; missing cells show '-'."""
    headers = [label] + [c[0] for c in columns]
    cells = []
    for row in rows:
        name = str(row.get(label) or row.get("target") or row.get("artifact", "?"))
        cells.append([name] + [fmt.format(row[key]) if row.get(key) is not None else "-"
                               for _, key, fmt in columns])
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gemma_export.bench", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args(argv)
    from gemma_runtime.errors import RuntimeInputError

    try:
        result = measure_here(args.artifact, args.prompt_tokens, args.new_tokens, args.threads, args.backend,
                              args.repeats, args.device)
    except (GemmaExportError, RuntimeInputError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result) if args.json else format_table([result]))


if __name__ == "__main__":
    main()
