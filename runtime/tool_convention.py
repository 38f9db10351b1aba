"""Function calling for models without native tool tokens (Gemma 1-3), by the JSON convention
Google documents for Gemma (ai.google.dev/gemma/docs/capabilities/function-calling, its JSON
variant): the first user turn opens with an instruction and the functions' definitions as JSON,
and the model calls a function by answering with `{"name": ..., "parameters": {...}}` alone. Here a
JSON list of such objects is parallel calls, and a tool's result goes back in a user turn inside a
```tool_output fence (as Google's Gemma function-calling guide returns results). A forced call
(tool_choice required or named) is this JSON on every family, held to the tools' schemas by the
grammar (as vLLM forces calls on any model)."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from gemma_runtime.response_parser import Call

INSTRUCTION = ("You have access to functions. If you decide to invoke any of the function(s), you MUST put it in "
               "the format of\n"
               '{"name": function name, "parameters": dictionary of argument name and its value}\n\n'
               "You SHOULD NOT include any other text in the response if you call a function\n")


def instruction(tools: Sequence[Mapping[str, Any]]) -> str:
    """The convention's instruction and the functions' definitions, before the first user text."""
    functions = [t["function"] for t in tools]
    return INSTRUCTION + json.dumps(functions, ensure_ascii=False) + "\n\n"


def calls_text(calls: Sequence[Mapping[str, Any]]) -> str:
    """An assistant message's earlier calls as the convention writes them."""
    written = [{"name": c["function"]["name"], "parameters": c["function"]["arguments"]} for c in calls]
    return json.dumps(written[0] if len(written) == 1 else written, ensure_ascii=False)


def messages(conversation: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """A conversation with tools, calls and results rewritten as plain user and assistant turns (the
    convention's instruction opening the first user turn); neighbouring turns of one role merged,
    as Gemma's turns alternate."""
    out: list[dict] = []
    pending = instruction(tools) if tools else ""
    for m in conversation:
        role, content = m.get("role"), m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            content = "\n".join(p for p in (content.strip(), calls_text(m["tool_calls"])) if p)
        elif role == "tool":
            role, content = "user", f"```tool_output\n{content}\n```"
        if role == "user" and pending:
            content, pending = pending + content, ""
        if out and out[-1]["role"] == role and role != "system":
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})
    return out


def read_calls(text: str, names: set[str]) -> list[Call] | None:
    """The calls an answer makes by the convention (a fenced answer too); None where it is not a
    call of one of the named functions (then it is content)."""
    body = text.strip()
    if body.startswith("```"):
        body = body.removesuffix("```").split("\n", 1)[-1] if body.endswith("```") and "\n" in body else ""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    items = value if isinstance(value, list) and value else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        arguments = item.get("parameters", item.get("arguments", {}))
        if not isinstance(arguments, dict):
            return None
        calls.append(Call(item["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls
