"""Speculative decoding, output-preserving: a drafter proposes the next few tokens, one call feeds
them after the row's last token, and the target's logits at each column decide how many are kept.

Verify: a row at `past` whose last token x is not yet fed feeds [x, d1 .. dk] at past .. past + k
and keeps every column's logits. Column i holds the target's distribution for the token after
d_i (after x for i = 0): the row's Generation takes a token from it exactly as plain decoding does
(the sampler with its logit bias, temperature, top-k / top-p, a grammar's mask, stop ids and
strings, the length limit), and the run goes on while that token equals the next draft d_{i+1}.
A stop inside the run ends the output there, as it would have one token at a time.

So greedy output is plain decoding's token for token, and a sampled one keeps the target's
distribution: for a drafter whose proposal is a point mass at d (prompt lookup is deterministic),
the standard rejection rule (accept d with probability min(1, p(d) / q(d)) = p(d); on rejection
sample from max(0, p - q) renormalized, which is p without d) is the same as one draw from p,
kept as the accepted draft iff it equals d. That is what this does, drawing one random number per
token as plain decoding does.

The columns fed after the first mismatch hold rejected drafts: backend.rewind(row, length) drops
them (a full-length cache's are simply overwritten by the next call; a sliding layer's window-sized
ring gets back the slots they overwrote, so a draft never exceeds the smallest ring: ring_limit).

Drafter: prompt lookup (PromptLookup) finds the latest earlier occurrence of the row's last n
tokens (n from `n` down to `min_n`) in its prompt and the text generated so far, and proposes the up
to k tokens that followed it; no match, no draft (the row takes a plain one-token step).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol, Sequence

import numpy as np

from gemma_runtime.backends.protocol import Backend
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.generation import Generation
from gemma_runtime.manifest import Manifest


class Drafter(Protocol):
    k: int  # the most tokens one draft proposes

    def draft(self, context: Sequence[int], limit: int) -> list[int]:
        """At most `limit` tokens proposed to follow `context` (the prompt and the tokens so far)."""


@dataclasses.dataclass(frozen=True)
class PromptLookup:
    k: int = 4
    n: int = 3  # the longest n-gram matched
    min_n: int = 1

    def __post_init__(self):
        if self.k < 1 or not 1 <= self.min_n <= self.n:
            raise RuntimeInputError(f"prompt lookup takes k >= 1 and 1 <= min_n <= n, got k={self.k}, n={self.n}, "
                                    f"min_n={self.min_n}")

    def draft(self, context: Sequence[int], limit: int) -> list[int]:
        limit = min(limit, self.k)
        if limit < 1:
            return []
        tokens = np.asarray(context, np.int64)
        length = len(tokens)
        for n in range(min(self.n, length - 1), self.min_n - 1, -1):
            tail = tokens[length - n:]
            starts = np.flatnonzero(tokens[:length - n] == tail[0])  # each leaves a token after its match
            for j in range(1, n):
                starts = starts[tokens[starts + j] == tail[j]]
            if len(starts):
                follow = int(starts[-1]) + n
                return tokens[follow: follow + limit].tolist()
        return []


DRAFTERS = ("prompt-lookup",)


def drafter(spec: str | Drafter | None) -> Drafter | None:
    """A drafter from `speculative=`: None (or "none") for plain decoding; "prompt-lookup",
    optionally with its options ("prompt-lookup:k=6,n=3,min_n=2"); or a Drafter."""
    if spec is None or spec == "none":
        return None
    if not isinstance(spec, str):
        if not callable(getattr(spec, "draft", None)) or not isinstance(getattr(spec, "k", None), int):
            raise RuntimeInputError(f"speculative= takes a drafter name or a Drafter, not {spec!r}")
        return spec
    name, _, options = spec.partition(":")
    if name not in DRAFTERS:
        raise RuntimeInputError(f"unknown speculative drafter {name!r} (drafters: {', '.join(DRAFTERS)})")
    fields = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in ("k", "n", "min_n") or not value.strip().isdigit():
            raise RuntimeInputError(f"prompt lookup's options are k, n and min_n as integers (k=4,n=3), got {item!r}")
        fields[key] = int(value)
    return PromptLookup(**fields)


def ring_limit(manifest: Manifest) -> int | None:
    """The most tokens a draft may hold for the artifact's rings (window-sized caches) to be restored
    after a rejection: the draft and the token before it must fit the smallest ring. None: no rings."""
    windows = [b.shape[2] for b in manifest.kv_cache.buffers if b.layout == "ring"]
    return min(windows) - 1 if windows else None


def draft_limit(generation: Generation, past: int, max_seq_len: int, ring: int | None) -> int:
    """How many draft tokens are worth feeding a row: within its remaining token budget (the last
    column's token must still count) and the context (and the rings)."""
    limit = min(generation.max_new_tokens - len(generation.tokens) - 1, max_seq_len - past - 1)
    return limit if ring is None else min(limit, ring)


def verify(generation: Generation, columns: np.ndarray, draft: Sequence[int]) -> Iterator[str]:
    """Takes the row's tokens from a verify call's logits (columns [len(draft) + 1, vocab]), one per
    column while the drafts are accepted; yields each token's text piece. The number of pieces is
    the number of the call's columns that stay in the cache."""
    for i, logits in enumerate(columns):
        yield generation.advance(logits)
        if generation.finish_reason is not None or i == len(draft) or generation.tokens[-1] != draft[i]:
            return


@dataclasses.dataclass
class Stats:
    """What speculation did: verify calls, draft tokens fed and accepted."""

    verifies: int = 0
    drafted: int = 0
    accepted: int = 0

    def add(self, drafted: int, kept: int) -> None:
        """kept: the call's columns that stay (the accepted drafts and the token before them)."""
        self.verifies += 1
        self.drafted += drafted
        self.accepted += kept - 1

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def decode(backend: Backend, prompts: Sequence[list[int]], rows: Sequence[Generation], past: np.ndarray,
           drafter: Drafter, pad_id: int, ring: int | None, stats: Stats) -> Iterator[tuple[int, str]]:
    """Model's decoding after the prompt (each row's first token taken, its last token not yet fed,
    past[r] its cache length): each unfinished row with a draft runs its own verify call (row r
    alone, first_row r), then the rows without one share a one-token call over the rows between
    them, where the others feed a pad at their next position (overwritten by their next call).
    Yields (row, text piece) as each row advances."""
    while True:
        plain = []
        for r, generation in enumerate(rows):
            if generation.finish_reason is not None:
                continue
            context = [*prompts[r], *generation.tokens]
            draft = drafter.draft(context, draft_limit(generation, int(past[r]), backend.max_seq_len, ring))
            if not draft:
                plain.append(r)
                continue
            width = 1 + len(draft)
            columns = backend.step(np.asarray([context[-1:] + draft]), past[r:r + 1], np.asarray([width]),
                                   np.arange(width)[None], first_row=r)[0]
            kept = 0
            for piece in verify(generation, columns, draft):
                kept += 1
                yield r, piece
            past[r] += kept
            stats.add(len(draft), kept)
            if kept < width:
                backend.rewind(r, int(past[r]))
        if not plain:
            if all(g.finish_reason is not None for g in rows):
                return
            continue
        first, last = plain[0], plain[-1] + 1
        ids = np.full((last - first, 1), pad_id, np.int64)
        for r in plain:
            ids[r - first, 0] = rows[r].tokens[-1]
        logits = backend.step(ids, past[first:last], np.ones(last - first, np.int64), first_row=first)[:, 0]
        for r in plain:
            past[r] += 1
            yield r, rows[r].advance(logits[r - first])


# The engine speculates while at most this many slots are busy: verify calls run one row each
# (onnxruntime's attention refuses several rows continuing by several tokens), so with more rows a
# shared one-token step makes more tokens per second than their verify calls (benchmarks/speculative.py
# measures both; see the README's speculative decoding section).
ENGINE_MAX_ROWS = 1


class EngineSpeculation:
    """The Engine's speculative decoding: at a step where at most max_rows slots are busy, each
    decoding request with a draft runs its own verify call (row views) and advances by what it
    accepts, the token after them included; the step's one-token call then carries the rest
    (verify_rows says which rows it advanced). With more rows busy the step is plain: a step then
    is bound by compute, not by reading the weights, and a verify call per row costs more than the
    shared call gains."""

    def __init__(self, drafter: Drafter, ring: int | None, max_rows: int = ENGINE_MAX_ROWS):
        if max_rows < 1:
            raise RuntimeInputError(f"speculative rows must be >= 1, got {max_rows}")
        self.drafter, self.ring, self.max_rows = drafter, ring, max_rows
        self.stats = Stats()

    def verify_rows(self, engine) -> set[int]:
        """Runs the step's verify calls; the rows they advanced (or finished)."""
        if engine.active > self.max_rows:
            return set()
        verified = set()
        for r, request in enumerate(engine.slots):
            if request is None or request._fed < len(request.prompt) or not request.tokens:
                continue
            generation = request.generation
            context = [*request.prompt, *generation.tokens]
            draft = self.drafter.draft(context, draft_limit(generation, int(engine.past[r]), engine.max_seq_len,
                                                            self.ring))
            if draft:
                self._verify(engine, r, request, draft)
                verified.add(r)
        return verified

    def _verify(self, engine, r: int, request, draft: list[int]) -> None:
        width = 1 + len(draft)
        backend = engine.model.backend
        columns = backend.step(np.asarray([[request.tokens[-1], *draft]]), engine.past[r:r + 1],
                               np.asarray([width]), np.arange(width)[None], first_row=r)[0]
        engine.metrics.steps += 1
        kept = 0
        for i in range(width):
            engine.past[r] += 1
            kept += 1
            engine._advance(r, request, columns[i])
            if engine.slots[r] is not request or i == len(draft) or request.tokens[-1] != draft[i]:
                break  # finished, the bonus token taken, or a draft rejected
        self.stats.add(len(draft), kept)
        if kept < width:
            backend.rewind(r, int(engine.past[r]))
