"""One generating sequence, as Model and Engine both run it: the next token sampled from each
step's logits, the stop ids, the stop strings, the length limit and the text (incrementally, see
detokenizer.py); with `logprobs` (a number of top alternatives, 0 for none) each token kept also
records its logprob under the step's raw logits (before any logit bias, temperature or grammar).
With a constraint (structured_output.py) only the tokens its grammar allows are sampled, a stop id
only where the grammar may end, and the generation stops ("stop") when the grammar is complete."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gemma_runtime.detokenizer import Detokenizer
from gemma_runtime.logprobs import TokenLogprob, token_logprobs
from gemma_runtime.sampling import Sampler
from gemma_runtime.structured_output import JsonConstraint
from gemma_runtime.tokenizer import Tokenizer

FINISH_REASONS = ("stop", "length", "cancelled", "error")


class Generation:
    def __init__(self, sampler: Sampler, stop_ids: set[int], max_new_tokens: int, tokenizer: Tokenizer | None,
                 stops: Sequence[str] = (), logprobs: int | None = None, constraint: JsonConstraint | None = None):
        """Without a tokenizer there is no text (and stop strings cannot match)."""
        self.sampler = sampler
        self.stop_ids = stop_ids
        self.max_new_tokens = max_new_tokens
        self.tokens: list[int] = []  # the stop id that ended it is not one of them
        self.finish_reason: str | None = None  # see FINISH_REASONS
        self.top_logprobs = logprobs
        self.constraint = constraint
        self.logprobs: list[TokenLogprob] = []  # one per token when top_logprobs is not None
        self._text = None if tokenizer is None else Detokenizer(tokenizer, stops)

    @property
    def text(self) -> str:
        return "" if self._text is None else self._text.text

    def advance(self, logits: np.ndarray, room: bool = True) -> str:
        """Takes the next token from one row's logits; returns the text it makes certain, and all
        the text held back when it ends the generation (finish_reason set). room: whether the
        context has room for another token."""
        token = self.sampler(logits if self.constraint is None else self.constraint.mask(logits))
        if token in self.stop_ids:
            return self.finish("stop")
        if self.constraint is not None:
            self.constraint.accept(token)
        self.tokens.append(token)
        if self.top_logprobs is not None:
            self.logprobs += token_logprobs(logits, [token], self.top_logprobs)
        piece = "" if self._text is None else self._text.add(token)
        if self._text is not None and self._text.stopped or self.constraint is not None and self.constraint.complete:
            return piece + self.finish("stop")
        if len(self.tokens) >= self.max_new_tokens or not room:
            return piece + self.finish("length")
        return piece

    def finish(self, reason: str) -> str:
        """Ends it; the text held back so far (none when cancelled or failed). A stop string found
        in that text makes the reason "stop"."""
        if reason in ("cancelled", "error") or self._text is None:
            self.finish_reason = reason
            return ""
        piece = self._text.finish()
        self.finish_reason = "stop" if self._text.stopped else reason
        return piece
