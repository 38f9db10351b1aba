"""A prompt's media: where each item's soft tokens lie among its token ids, their embeddings, and
the splices and chunk cuts that keep an image whole within one decoder call."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import Splice


@dataclasses.dataclass(frozen=True)
class MediaSpan:
    """One item's soft tokens: columns start .. start + len(embeds) - 1 of the prompt."""

    start: int
    embeds: np.ndarray  # [tokens, hidden]
    bidirectional: bool  # an image: its tokens see each other both ways (never split across calls)

    @property
    def end(self) -> int:
        return self.start + len(self.embeds)


class MediaPrompt:
    def __init__(self, spans: Sequence[MediaSpan]):
        self.spans = sorted(spans, key=lambda s: s.start)

    def splice(self, start: int, end: int) -> Splice | None:
        """The rows that replace columns start .. end - 1 of the prompt, as columns of that call."""
        columns, embeds, ahead = [], [], []
        for span in self.spans:
            lo, hi = max(span.start, start), min(span.end, end)
            if lo >= hi:
                continue
            at = np.arange(lo, hi)
            columns.append(at - start)
            embeds.append(span.embeds[lo - span.start: hi - span.start])
            ahead.append(hi - 1 - at if span.bidirectional else np.zeros(len(at), np.int64))
        if not columns:
            return None
        return Splice(np.concatenate(columns), np.concatenate(embeds), np.concatenate(ahead).astype(np.int64))

    def cut(self, start: int, end: int) -> int:
        """The end of a call that feeds from `start` up to `end`, moved so that no image is split:
        back to the image's start, or past its end when it starts the call."""
        for span in self.spans:
            if span.bidirectional and span.start < end < span.end:
                return span.start if span.start > start else span.end
        return end


def find_spans(ids: Sequence[int], placeholder: int, items: Sequence[np.ndarray], bidirectional: bool,
               what: str) -> list[MediaSpan]:
    """Each run of the placeholder id in ids, in order, takes the next item's embeddings; the run's
    length must be the item's token count."""
    ids = np.asarray(ids)
    at = np.flatnonzero(ids == placeholder)
    runs = np.split(at, np.flatnonzero(np.diff(at) != 1) + 1) if len(at) else []
    if len(runs) != len(items):
        raise RuntimeInputError(f"the prompt has {len(runs)} {what} placeholder run(s) for {len(items)} {what}(s)")
    spans = []
    for k, (run, embeds) in enumerate(zip(runs, items)):
        if len(run) != len(embeds):
            raise RuntimeInputError(f"{what} {k}: {len(run)} placeholder tokens in the prompt, the encoder gives "
                                    f"{len(embeds)}")
        spans.append(MediaSpan(int(run[0]), embeds, bidirectional))
    return spans
