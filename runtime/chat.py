"""A conversation as the text of a prompt: chat_prompt() is the one way the CLI, Model and the
server write it. With the checkpoint's own chat template in the artifact (manifest.chat_template)
that template renders it (chat_template.py); without one, render() writes the hand-written layout.

The hand-written layout is the chat format the manifest records (manifest.chat: turn markers,
the model's role name, where a system prompt goes). Every turn is `{start}{role}\n{text}{end}\n`;
the text ends with an open model turn. Gemma has no system role: a system prompt opens the first
user turn. BOS is the tokenizer's job (added once when the text is encoded).

Manifests before format version 4 record no chat format: it is recovered from the tokenizer's
pieces of the manifest's turn tokens (tokens.start_of_turn, tokens.end_of_turn).

A user message's images and audio are written as the model's placeholders (media_placeholder)
inside its turn, where Gemma's chat templates put them."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from gemma_runtime import gemma4_format, tool_convention
from gemma_runtime.chat_template import ChatTemplate
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


def media_placeholder(manifest: Manifest, tokenizer: Tokenizer | None, modality: str) -> str:
    """The text that marks one image or audio clip ("image" | "audio") in a prompt for this artifact
    (Gemma 3 `<start_of_image>`, Gemma 4 the piece of its image or audio token id); RuntimeInputError
    where the artifact has no encoder for it."""
    from gemma_runtime.media.processors import placeholder

    entry = (manifest.multimodal or {}).get(modality)
    if entry is None:
        raise RuntimeInputError(f"this artifact takes no {'images' if modality == 'image' else 'audio'} (exported "
                                "with --text-only, or its model has no such encoder)")
    if tokenizer is None:
        raise RuntimeInputError("media need the artifact's tokenizer")
    return placeholder(entry, tokenizer)


def with_media_marks(text: str, manifest: Manifest, tokenizer: Tokenizer | None, images: int, audio: int) -> str:
    """A user message with one placeholder per image, then per audio clip, in front, unless it marks
    its media itself (media/processors.py checks that the counts agree)."""
    marks = [(media_placeholder(manifest, tokenizer, m), n) for m, n in (("image", images), ("audio", audio)) if n]
    if any(mark in text for mark, _ in marks):
        return text
    return "".join(mark * n for mark, n in marks) + text


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
        prefix = ""
        if i == 0 and system is not None:
            if role != USER:
                raise RuntimeInputError("a system prompt must be followed by a user message")
            # the one placement (manifest.SYSTEM_PLACEMENTS), the system text as given and the message
            # stripped, as Gemma 3's template writes them
            prefix = f"{system}\n\n"
        parts.append(f"{chat.turn_start}{role}\n{prefix}{(m.get('content') or '').strip()}{chat.turn_end}\n")
    if add_generation_prompt:
        parts.append(f"{chat.turn_start}{chat.model_role}\n")
    return "".join(parts)


def writes_tools_natively(chat: ChatFormat | None, template: ChatTemplate | None) -> bool:
    """Whether tools, calls and results go into the prompt in the model's own format: the
    checkpoint's template where it writes tools, Gemma 4's tokens in the hand-written layout; else
    by Google's JSON convention (tool_convention.py)."""
    if template is not None:
        return template.writes_tools
    return chat is not None and chat.turn_start == gemma4_format.TURN_START


def chat_prompt(messages: Sequence[Mapping[str, Any]], chat: ChatFormat | None, template: ChatTemplate | None,
                tools: Sequence[Mapping[str, Any]] | None = None, chat_template_kwargs: Mapping[str, Any] | None = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt text for a conversation, to be encoded with the tokenizer's one BOS: the checkpoint's
    template where the artifact has one (its own BOS removed, since encoding adds it), else the
    hand-written layout `chat`. Tools, assistant messages' `tool_calls` and `tool` messages are
    written natively where the model has a format for them (writes_tools_natively), else by the
    JSON convention. The hand-written layout reads one template argument, Gemma 4's
    `enable_thinking`; it ignores the others (a client may send them to any model)."""
    with_tools = bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
    if with_tools and not writes_tools_natively(chat, template):
        messages, tools = tool_convention.messages(messages, tools), None
    if template is not None:
        text = template.render(messages, tools, chat_template_kwargs, add_generation_prompt)
        bos = template.special_tokens.get("bos_token")
        return text[len(bos):] if bos and text.startswith(bos) else text
    if chat is None:
        raise RuntimeInputError("no chat format and no chat template")
    thinking = bool((chat_template_kwargs or {}).get("enable_thinking"))
    if chat.turn_start == gemma4_format.TURN_START and (with_tools or thinking):
        try:
            return gemma4_format.render(messages, tools, thinking, chat.model_role, add_generation_prompt)
        except ValueError as e:
            raise RuntimeInputError(str(e)) from None
    return render(list(messages), chat, add_generation_prompt)
