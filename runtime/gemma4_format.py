"""Gemma 4's native tool and thinking format: how a prompt writes tool declarations, calls and
results, and how the model's own calls and thoughts read back.

Where each fact comes from:
- The model's output (what the parser reads): transformers 5.25's Gemma 4 response template,
  `transformers/cli/serving/utils.py` `_RESPONSE_TEMPLATE_FALLBACKS[("gemma4",)]`: thoughts between
  `<|channel>thought\n` and `<channel|>`; each call `<|tool_call>call:NAME{...}<tool_call|>`, its
  arguments an object with bare keys and strings between `<|"|>` and `<|"|>` (read by
  `transformers/utils/chat_parsing/content_parsers.py` `_json` with `unquoted_keys` and
  `string_delims`); the answer ends at `<turn|>`, `<|tool_response>` or `<eos>`.
- The prompt (what the hand-written layout writes where a checkpoint ships no template):
  tests/chat_templates/gemma4_small.jinja, which writes these pieces as transformers' parser reads
  them: `<|think|>` opening the first user turn when thinking is on, then each tool as
  `<|tool>declaration:NAME{description:...,parameters:...}<tool|>`, then the system prompt; a model
  turn's calls, then each result as `<|tool_response>response:NAME{value}<tool_response|>` in the
  same model turn, left open for the model to go on; earlier turns' thoughts dropped.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

TURN_START, TURN_END = "<|turn>", "<turn|>"
THINK = "<|think|>"
THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>thought\n", "<channel|>"
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
DECLARATION_OPEN, DECLARATION_CLOSE = "<|tool>declaration:", "<tool|>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<|tool_response>response:", "<tool_response|>"
STRING = '<|"|>'
CALL_NAME = re.compile(r"call:([A-Za-z0-9_-]+)")
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def value(v: Any) -> str:
    """A value as Gemma 4 writes it: strings between <|"|>, objects with bare keys, no spaces."""
    if isinstance(v, str):
        return STRING + v + STRING
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{value(item)}" for k, item in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(value(item) for item in v) + "]"
    return json.dumps(v)


def declaration(function: Mapping[str, Any]) -> str:
    return (DECLARATION_OPEN + function["name"] + value({"description": function.get("description") or "",
                                                         "parameters": function.get("parameters") or {}})
            + DECLARATION_CLOSE)


def call(name: str, arguments: Any) -> str:
    """A call as the model writes it; arguments given as text (not an object) are written as given."""
    return CALL_OPEN + "call:" + name + (value(arguments) if isinstance(arguments, Mapping) else str(arguments)) \
        + CALL_CLOSE


def response(name: str, content: Any) -> str:
    return RESPONSE_OPEN + name + value(content) + RESPONSE_CLOSE


def string_end(text: str, start: int) -> int:
    """Where the string opened at start (a `<|"|>` or a JSON `"`) ends, just past its closing
    delimiter; -1 where it does not end in text."""
    if text.startswith(STRING, start):
        end = text.find(STRING, start + len(STRING))
        return -1 if end < 0 else end + len(STRING)
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return -1


def arguments_json(text: str) -> str:
    """A call's arguments (`{city:<|"|>Paris<|"|>,days:2}`) as a JSON text; ValueError where they are
    not an object."""
    out, i, last = [], 0, ""
    while i < len(text):
        c = text[i]
        if text.startswith(STRING, i) or c == '"':
            end = string_end(text, i)
            if end < 0:
                raise ValueError("an unterminated string")
            piece = text[i:end]
            out.append(json.dumps(piece[len(STRING):-len(STRING)]) if c == "<" else piece)
            i, last = end, '"'
            continue
        word = _BARE_WORD.match(text, i) if last in "{," else None
        if word:
            after = len(text) - len(text[word.end():].lstrip())
            if text[after:after + 1] == ":":  # a bare key
                out.append(json.dumps(word.group()))
                i, last = word.end(), '"'
                continue
        out.append(c)
        if not c.isspace():
            last = c
        i += 1
    try:
        parsed = json.loads("".join(out))
    except RecursionError:
        raise ValueError("the arguments nest too deep") from None
    if not isinstance(parsed, dict):
        raise ValueError("the arguments are not an object")
    return json.dumps(parsed, ensure_ascii=False)


def render(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, thinking: bool,
           model_role: str, add_generation_prompt: bool) -> str:
    """A conversation in Gemma 4's hand-written layout with its tools, calls, results and the
    thinking switch (as tests/chat_templates/gemma4_small.jinja writes them). Roles: system (first),
    user, assistant (or the model's role name), tool."""
    messages = list(messages)
    system = messages.pop(0)["content"].strip() if messages and messages[0].get("role") == "system" else ""
    parts, first_user, model_open, calls, answered = [], True, False, [], 0
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "user":
            if model_open:
                parts.append(TURN_END + "\n")
                model_open = False
            parts.append(TURN_START + "user\n")
            if first_user:
                parts.append(THINK if thinking else "")
                parts += [declaration(t["function"]) for t in tools or []]
                parts.append(f"{system}\n\n" if system else "")
                first_user = False
            parts.append((m.get("content") or "").strip() + TURN_END + "\n")
        elif role in ("assistant", model_role):
            if not model_open:
                parts.append(TURN_START + model_role + "\n")
            parts.append((m.get("content") or "").strip())
            calls, answered = m.get("tool_calls") or [], 0
            parts += [call(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            model_open = bool(calls)
            if not calls:
                parts.append(TURN_END + "\n")
        elif role == "tool":
            if not model_open or answered >= len(calls):
                raise ValueError(f"messages[{i}]: a tool message must answer a tool call of the assistant "
                                 "message before it")
            name = m.get("name") or calls[answered]["function"]["name"]
            parts.append(response(name, m.get("content") or ""))
            answered += 1
        else:
            raise ValueError(f"unknown chat role {role!r} (user, assistant, tool; system first)")
    if model_open:
        if not add_generation_prompt:
            parts.append(TURN_END + "\n")
    elif add_generation_prompt:
        parts.append(TURN_START + model_role + "\n")
    return "".join(parts)
