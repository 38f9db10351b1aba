"""Text of a growing token sequence, piece by piece, with a bounded amount of tokenizer work per
token (the prefix-offset/read-offset technique): each new token decodes only the few tokens since
the last complete piece, twice (with and without the new tokens), and the difference is the new
text. A piece ending in U+FFFD (a character still being assembled from byte tokens) is held back
until the character is whole. Stop strings are searched in the text not yet released, the held
incomplete piece included (as in tokenizer.decode of the tokens so far), and a tail that could
begin one is held back, so a stop string spanning tokens is found and never shown.

The released text, once finish() is called or a stop string found, is tokenizer.decode(the tokens
added) cut before the first stop string. The window grows only across tokens that add no complete text (incomplete UTF-8,
pieces that decode to nothing), a few tokens in any real text.
"""

from __future__ import annotations

from typing import Protocol, Sequence

INCOMPLETE = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


class Detokenizer:
    def __init__(self, tokenizer: Decoder, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.tokens: list[int] = []
        self.text = ""  # released so far
        self.stopped = False  # a stop string was found: nothing more is released
        self._prefix = 0  # tokens[_prefix:_read] decode to text already taken (the window's context)
        self._read = 0
        self._pending = ""  # taken but not released: a tail that could begin a stop string

    def add(self, token: int) -> str:
        """The text this token makes certain (often empty)."""
        self.tokens.append(token)
        if self.stopped:
            return ""
        new = self._new_text()
        if not new or new.endswith(INCOMPLETE) and not any(s in self._pending + new for s in self.stops):
            return ""
        self._take(new)
        return self._release(final=False)

    def finish(self) -> str:
        """Everything held back, incomplete characters included (as tokenizer.decode gives them)."""
        if self.stopped:
            return ""
        self._take(self._new_text())
        return self._release(final=True)

    def _new_text(self) -> str:
        context = self.tokenizer.decode(self.tokens[self._prefix:self._read])
        window = self.tokenizer.decode(self.tokens[self._prefix:])
        return window[len(context):] if len(window) > len(context) else ""

    def _take(self, new: str) -> None:
        self._pending += new
        self._prefix, self._read = self._read, len(self.tokens)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            piece, self._pending, self.stopped = self._pending[:min(hits)], "", True
        else:
            keep = 0 if final else self._stop_prefix()
            cut = len(self._pending) - keep
            piece, self._pending = self._pending[:cut], self._pending[cut:]
        self.text += piece
        return piece

    def _stop_prefix(self) -> int:
        """The length of the longest tail of the pending text that begins a stop string."""
        text = self._pending
        return max((k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)
