"""A conversation as text, in the chat format the manifest records (manifest.chat: turn markers,
the model's role name, where a system prompt goes). Every turn is `{start}{role}\n{text}{end}\n`;
the text ends with an open model turn. Gemma has no system role: a system prompt opens the first
user turn. BOS is the tokenizer's job (added once when the text is encoded).

Manifests before format version 4 record no chat format: it is recovered from the tokenizer's
pieces of the manifest's turn tokens (tokens.start_of_turn, tokens.end_of_turn)."""

from __future__ import annotations

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import ChatFormat, Manifest
from gemma_runtime.tokenizer import Tokenizer

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"


def chat_format(manifest: Manifest, tokenizer: Tokenizer | None) -> ChatFormat:
    """The artifact's chat format; a clear error where neither the manifest nor the tokenizer has it."""
    if manifest.chat is not None:
        return manifest.chat
    start, end = manifest.tokens.start_of_turn, manifest.tokens.end_of_turn
    if tokenizer is None or start is None or end is None:
        raise RuntimeInputError(f"no chat format: the manifest (format_version {manifest.format_version}) records "
                                "none and the artifact's tokenizer has no turn pieces; export it again with this "
                                "gemma-export to chat")
    return ChatFormat(tokenizer.piece(start), tokenizer.piece(end), model_role="model", system="first_user_turn")


def render(messages: list[dict], chat: ChatFormat, add_generation_prompt: bool = True) -> str:
    """The conversation as text; ends with an open model turn."""
    roles = {USER: USER, ASSISTANT: chat.model_role, chat.model_role: chat.model_role}
    messages = list(messages)
    system = None
    if messages and messages[0].get("role") == SYSTEM:
        system = messages.pop(0)["content"]
    parts = []
    for i, m in enumerate(messages):
        role = roles.get(m.get("role"))
        if role is None:
            raise RuntimeInputError(f"unknown chat role {m.get('role')!r} (user, assistant, system first)")
        content = m["content"]
        if i == 0 and system is not None:
            if role != USER:
                raise RuntimeInputError("a system prompt must be followed by a user message")
            content = f"{system}\n\n{content}"  # the one placement (manifest.SYSTEM_PLACEMENTS)
        parts.append(f"{chat.turn_start}{role}\n{content.strip()}{chat.turn_end}\n")
    if add_generation_prompt:
        parts.append(f"{chat.turn_start}{chat.model_role}\n")
    return "".join(parts)
