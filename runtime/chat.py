"""A conversation as text, in the chat format the manifest records (manifest.chat: turn markers,
the model's role name, where a system prompt goes). Every turn is `{start}{role}\n{text}{end}\n`;
the text ends with an open model turn. Gemma has no system role: a system prompt opens the first
user turn. BOS is the tokenizer's job (added once when the text is encoded).

Manifests before format version 4 record no chat format: it is recovered from the tokenizer's
pieces of the manifest's turn tokens (tokens.start_of_turn, tokens.end_of_turn).

A user message's images and audio are written as the model's placeholders (media_placeholder)
inside its turn, where Gemma's chat templates put them."""

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
        content = m["content"]
        if i == 0 and system is not None:
            if role != USER:
                raise RuntimeInputError("a system prompt must be followed by a user message")
            content = f"{system}\n\n{content}"  # the one placement (manifest.SYSTEM_PLACEMENTS)
        parts.append(f"{chat.turn_start}{role}\n{content.strip()}{chat.turn_end}\n")
    if add_generation_prompt:
        parts.append(f"{chat.turn_start}{chat.model_role}\n")
    return "".join(parts)
