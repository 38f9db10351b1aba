"""Gemma's chat formats, by family. There is no system role: a system prompt opens the first user
turn. Gemma 1-3 write turns as `<start_of_turn>role\n...<end_of_turn>\n`, Gemma 4 as
`<|turn>role\n...<turn|>\n`; both end an exchange with an open model turn. BOS is the
tokenizer's job (added once when the text is encoded)."""

from __future__ import annotations

from gemma_runtime.errors import RuntimeInputError

# family -> (turn start, turn end)
TURN_MARKERS = {"gemma": ("<start_of_turn>", "<end_of_turn>"), "gemma2": ("<start_of_turn>", "<end_of_turn>"),
                "gemma3": ("<start_of_turn>", "<end_of_turn>"), "gemma4": ("<|turn>", "<turn|>")}
# pieces besides eos and the turn end that end a model turn
EXTRA_STOP_PIECES = {"gemma4": ("<|tool_response>",)}
ROLES = {"user": "user", "assistant": "model", "model": "model"}


def render(messages: list[dict], family: str = "gemma3", add_generation_prompt: bool = True) -> str:
    """The conversation as text; ends with an open model turn."""
    if family not in TURN_MARKERS:
        raise RuntimeInputError(f"no chat format for family {family!r}")
    start, end = TURN_MARKERS[family]
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
        parts.append(f"{start}{role}\n{content.strip()}{end}\n")
    if add_generation_prompt:
        parts.append(f"{start}model\n")
    return "".join(parts)
