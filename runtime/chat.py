"""Gemma's chat format. There is no system role: a system prompt opens the first user turn."""

from __future__ import annotations

from gemma_runtime.errors import RuntimeInputError

START, END = "<start_of_turn>", "<end_of_turn>"
ROLES = {"user": "user", "assistant": "model", "model": "model"}


def render(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The conversation as text (BOS is the tokenizer's job); ends with an open model turn."""
    messages = list(messages)
    system = None
    if messages and messages[0].get("role") == "system":
        system = messages.pop(0)["content"]
    parts = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.get("role"))
        if role is None:
            raise RuntimeInputError(f"unknown chat role {m.get('role')!r} (user, assistant, system first)")
        content = m["content"]
        if i == 0 and system is not None:
            if role != "user":
                raise RuntimeInputError("a system prompt must be followed by a user message")
            content = f"{system}\n\n{content}"
        parts.append(f"{START}{role}\n{content.strip()}{END}\n")
    if add_generation_prompt:
        parts.append(f"{START}model\n")
    return "".join(parts)
