"""A chat completion's text read back into OpenAI's message fields as it streams: `content`,
`reasoning_content` (Gemma 4's thought channel) and `tool_calls`. A parser is fed the generated
text in whatever pieces the detokenizer gives (a marker such as Gemma 4's `<|"|>` may be split
anywhere) and returns what those pieces make certain, holding back the rest; finish() flushes it.

- Gemma4Parser: Gemma 4's native format (gemma4_format.py says where it comes from).
- JsonCallParser: the JSON convention Google documents for function calling with Gemma 1-3
  (tool_calls.py), also the form of every forced call (tool_choice required or named), whose text
  the grammar holds to it.
- PlainParser: text as content.

ChatOutput turns a parser's events into OpenAI's streamed deltas (each call once, whole, with its
`index`) and into the non-streamed message.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Callable, Literal, Union

from gemma_runtime import gemma4_format as g4


@dataclasses.dataclass
class Call:
    name: str
    arguments: str  # a JSON text (as the model wrote it where it is not JSON)
    id: str = dataclasses.field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])


Event = tuple[Literal["content", "reasoning"], str] | tuple[Literal["call"], Call]


class PlainParser:
    def feed(self, text: str) -> list[Event]:
        return [("content", text)] if text else []

    def finish(self) -> list[Event]:
        return []


def _held(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of text could begin one of the markers (held back until the
    next piece says)."""
    for n in range(min(len(text), max(len(m) for m in markers) - 1), 0, -1):
        if any(m.startswith(text[-n:]) for m in markers):
            return n
    return 0


def _gemma4_call(body: str, complete: bool) -> Call | None:
    """A call's body (`call:NAME{...}`) as a Call; None where it names no function, or where its
    arguments are not an object and the call was not closed (complete)."""
    name = g4.CALL_NAME.match(body)
    if name is None:
        return None
    raw = body[name.end():].strip()
    try:
        arguments = g4.arguments_json(raw)
    except ValueError:
        if not complete:
            return None
        arguments = raw  # as OpenAI's own, a call's arguments are not always valid JSON
    return Call(name.group(1), arguments)


class Gemma4Parser:
    """Content, thoughts and (with calls=True) tool calls in Gemma 4's format."""

    def __init__(self, calls: bool):
        self._openers = (g4.THOUGHT_OPEN, g4.CALL_OPEN) if calls else (g4.THOUGHT_OPEN,)
        self._state: Literal["content", "reasoning", "call"] = "content"
        self._pending = ""
        self._scanned = 0  # how far a call's body has been read
        self._quote: str | None = None  # the delimiter of the string a call's body is in, if any

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while True:
            if self._state == "call":
                end = self._call_close()
                if end < 0:
                    return events
                call = _gemma4_call(self._pending[:end], complete=True)
                events.append(("call", call) if call else ("content", g4.CALL_OPEN + self._pending[:end + len(
                    g4.CALL_CLOSE)]))
                self._pending, self._state = self._pending[end + len(g4.CALL_CLOSE):], "content"
                continue
            markers = self._openers if self._state == "content" else (g4.THOUGHT_CLOSE,)
            found = [(self._pending.find(m), m) for m in markers if m in self._pending]
            if not found:
                keep = _held(self._pending, markers)
                self._emit(events, self._pending[:len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep:]
                return events
            at, marker = min(found)
            self._emit(events, self._pending[:at])
            self._pending = self._pending[at + len(marker):]
            self._state = {g4.THOUGHT_OPEN: "reasoning", g4.CALL_OPEN: "call", g4.THOUGHT_CLOSE: "content"}[marker]
            self._scanned, self._quote = 0, None

    def _call_close(self) -> int:
        """Where `<tool_call|>` closes the call's body outside its strings; -1 where it does not
        yet. Reads on from where the last piece stopped (a long call costs linear time), stopping
        before a tail that may be the start of a marker."""
        body, i = self._pending, self._scanned
        while i < len(body):
            rest = body[i:i + len(g4.CALL_CLOSE)]
            if self._quote is None:
                if rest.startswith(g4.CALL_CLOSE):
                    return i
                if rest.startswith(g4.STRING) or body[i] == '"':
                    self._quote = g4.STRING if rest.startswith(g4.STRING) else '"'
                    i += len(self._quote)
                    continue
                if g4.CALL_CLOSE.startswith(rest) or g4.STRING.startswith(rest):
                    break  # the tail may be a marker: the next piece says
            elif self._quote == '"':
                if body[i] == "\\":
                    if i + 1 == len(body):
                        break
                    i += 1
                elif body[i] == '"':
                    self._quote = None
            elif rest.startswith(g4.STRING):
                self._quote = None
                i += len(g4.STRING)
                continue
            elif g4.STRING.startswith(rest):
                break
            i += 1
        self._scanned = i
        return -1

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._state == "call":  # the model stopped before closing it (a stop id, or max_tokens)
            call = _gemma4_call(self._pending, complete=False)
            events.append(("call", call) if call else ("content", g4.CALL_OPEN + self._pending))
        else:
            self._emit(events, self._pending)
        self._pending, self._state, self._scanned, self._quote = "", "content", 0, None
        return events

    def _emit(self, events: list[Event], text: str) -> None:
        if text:
            events.append((self._state, text))


class JsonCallParser:
    """Google's JSON convention for Gemma 1-3: a call is the whole answer, `{"name": ..., "parameters":
    {...}}`, or a list of them (parallel calls), possibly in a ``` fence. An answer that starts like
    one is held back to its end and read there (content where it is not a call of a given tool);
    any other streams as content. forced: the grammar made the whole answer a call."""

    def __init__(self, tool_names: set[str], read: Callable[[str, set[str]], list[Call] | None], forced: bool):
        self._names, self._read, self._forced = tool_names, read, forced
        self._pending = ""
        self._streaming = False

    def feed(self, text: str) -> list[Event]:
        if self._streaming:
            return [("content", text)] if text else []
        self._pending += text
        start = self._pending.lstrip()
        if self._forced or not start or start[0] in "{[" or "```".startswith(start[:3]):
            return []
        self._streaming = True
        text, self._pending = self._pending, ""
        return [("content", text)]

    def finish(self) -> list[Event]:
        text, self._pending = self._pending, ""
        calls = self._read(text, self._names) if text else None
        if calls is not None:
            return [("call", c) for c in calls]
        return [("content", text)] if text else []


Parser = Union[PlainParser, Gemma4Parser, JsonCallParser]


class ChatOutput:
    """One choice's parsed output: OpenAI's stream deltas as the text comes, and the whole message."""

    def __init__(self, parser: Parser, max_calls: int | None = None):
        """max_calls: calls past it are dropped (parallel_tool_calls false)."""
        self.parser = parser
        self.max_calls = max_calls
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[Call] = []

    def feed(self, text: str) -> list[dict]:
        return self._deltas(self.parser.feed(text))

    def finish(self) -> list[dict]:
        return self._deltas(self.parser.finish())

    def _deltas(self, events: list[Event]) -> list[dict]:
        deltas: list[dict] = []
        for kind, item in events:
            if kind == "call":
                if self.max_calls is not None and len(self.calls) >= self.max_calls:
                    continue
                deltas.append({"tool_calls": [{"index": len(self.calls), "id": item.id, "type": "function",
                                               "function": {"name": item.name, "arguments": item.arguments}}]})
                self.calls.append(item)
                continue
            (self.content if kind == "content" else self.reasoning).append(item)
            key = "content" if kind == "content" else "reasoning_content"
            if deltas and list(deltas[-1]) == [key]:
                deltas[-1][key] += item
            else:
                deltas.append({key: item})
        return deltas

    def message(self) -> dict:
        """The assistant message's fields (content None beside tool calls and no text)."""
        content = "".join(self.content)
        return {"content": None if self.calls and not content.strip() else content,
                "reasoning_content": "".join(self.reasoning) or None,
                "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name,
                                                                             "arguments": c.arguments}}
                               for c in self.calls] or None}

    def finish_reason(self, reason: str) -> str:
        return "tool_calls" if self.calls and reason == "stop" else reason
