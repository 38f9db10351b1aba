"""Token logprobs (logprobs.TokenLogprob) in OpenAI's two shapes: chat's `content[]` (token,
logprob, bytes, top_logprobs) and the legacy completions' parallel lists (tokens, token_logprobs,
top_logprobs as text -> logprob, text_offset). A token's text is its bytes (Tokenizer.token_bytes)
decoded, a partial UTF-8 character as U+FFFD; without a tokenizer it is `token_id:N`, as vLLM
writes it. text_offset counts the characters of the token texts before each token, from a given
start."""

from __future__ import annotations

from typing import Sequence

from gemma_runtime.logprobs import TokenLogprob
from gemma_runtime.tokenizer import Tokenizer


class TokenTexts:
    def __init__(self, tokenizer: Tokenizer | None):
        self.tokenizer = tokenizer
        self._bytes: dict[int, bytes] = {}  # at most the vocabulary

    def bytes(self, token: int) -> bytes | None:
        if self.tokenizer is None:
            return None
        if token not in self._bytes:
            self._bytes[token] = self.tokenizer.token_bytes(token)
        return self._bytes[token]

    def text(self, token: int) -> str:
        data = self.bytes(token)
        return f"token_id:{token}" if data is None else data.decode("utf-8", errors="replace")

    def _top(self, token: int, logprob: float) -> dict:
        data = self.bytes(token)
        return {"token": self.text(token), "logprob": logprob, "bytes": None if data is None else list(data)}

    def chat(self, entries: Sequence[TokenLogprob]) -> list[dict]:
        """chat.completion's choices[].logprobs.content."""
        return [{**self._top(e.token, e.logprob), "top_logprobs": [self._top(t, lp) for t, lp in e.top]}
                for e in entries]

    def legacy(self, tokens: Sequence[int], entries: Sequence[TokenLogprob | None], start: int = 0) -> dict:
        """text_completion's choices[].logprobs for these tokens: entries[i] gives token i's logprob
        and alternatives (None for a prompt's first token)."""
        texts = [self.text(t) for t in tokens]
        offsets, at = [], start
        for text in texts:
            offsets.append(at)
            at += len(text)
        return {"tokens": texts,
                "token_logprobs": [None if e is None else e.logprob for e in entries],
                "top_logprobs": [None if e is None else {self.text(t): lp for t, lp in e.top} for e in entries],
                "text_offset": offsets}
