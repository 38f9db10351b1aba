"""A chat request's messages as the prompt the model reads: text and content parts rendered by the
checkpoint's chat template, media parts (`image_url` as base64 data: URLs, `input_audio` as base64
WAV) replaced by the model's placeholder, their bytes kept in order. Nothing is fetched or read
from disk: remote URLs and paths are refused."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json

from gemma_runtime import api_models as api
from gemma_runtime.api_errors import ApiError
from gemma_runtime.chat import media_placeholder
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.request_body import MAX_JSON_DEPTH, json_depth

MEDIA_PARTS = ("image_url", "input_image", "input_audio", "image", "audio", "file", "video_url")
TAKEN_PARTS = {"image_url": "image", "input_audio": "audio"}  # content part type -> modality
IMAGE_TYPES = ("png", "jpeg", "jpg", "gif", "bmp", "webp", "tiff")  # data:image/<type> (media/images.py reads them)
AUDIO_FORMATS = ("wav",)


def input_modalities(model) -> list[str]:
    """"text", then each modality the artifact has an encoder for."""
    section = model.manifest.multimodal or {}
    return ["text", *(m for m in ("image", "audio") if m in section)]


@dataclasses.dataclass
class ChatPrompt:
    """A conversation rendered as text, and the media its placeholders stand for, in order."""

    text: str
    images: list[bytes] = dataclasses.field(default_factory=list)
    audio: list[bytes] = dataclasses.field(default_factory=list)


def chat_prompt(model, messages: list[api.Message], tools: list[dict] | None = None,
                chat_template_kwargs: dict | None = None) -> ChatPrompt:
    """The messages rendered by the model's chat template (or hand-written layout) with the tools
    it declares, each media part replaced by the model's placeholder and its bytes kept in order
    (ApiError where they are bad)."""
    prompt = ChatPrompt("")
    flat = []
    calls: dict[str, str] = {}  # tool call id -> its function's name, for the tool messages that answer it
    for i, m in enumerate(messages):
        role = "user" if m.role == "developer" else m.role
        content = m.content
        if isinstance(content, list):
            content = _content(model, i, role, content, prompt)
        if content is None and (m.tool_calls or role == "tool"):
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of content parts", "messages")
        message = {"role": role, "content": content}
        if m.tool_calls:
            if role != "assistant":
                raise ApiError(400, f"messages[{i}]: only assistant messages carry tool_calls", "messages")
            message["tool_calls"] = [_call(i, j, call) for j, call in enumerate(m.tool_calls)]
            calls.update((call.id, call.function.name) for call in m.tool_calls)
        if role == "tool":
            if m.tool_call_id is None:
                raise ApiError(400, f"messages[{i}]: a tool message needs the tool_call_id it answers", "messages")
            message["tool_call_id"] = m.tool_call_id
            name = m.name or calls.get(m.tool_call_id)
            if name is not None:
                message["name"] = name
        if role == "assistant" and m.reasoning_content is not None:
            message["reasoning_content"] = m.reasoning_content
        flat.append(message)
    if model.tokenizer is None:
        raise ApiError(400, "this artifact has no tokenizer: use /v1/completions with token ids", "messages")
    try:
        prompt.text = model.chat_prompt(flat, tools, chat_template_kwargs)
    except RuntimeInputError as e:
        raise ApiError(400, str(e), "messages") from None
    return prompt


def _call(i: int, j: int, call: api.MessageToolCall) -> dict:
    """An earlier call as templates read it (transformers' convention): its arguments an object."""
    arguments = call.function.arguments
    if isinstance(arguments, str):
        if json_depth(arguments.encode()) > MAX_JSON_DEPTH:
            raise ApiError(400, f"messages[{i}].tool_calls[{j}].function.arguments nest deeper than "
                           f"{MAX_JSON_DEPTH} levels", "messages", "nested_too_deep")
        try:
            arguments = json.loads(arguments)
        except ValueError:
            raise ApiError(400, f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON",
                           "messages") from None
    if not isinstance(arguments, dict):
        raise ApiError(400, f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object", "messages")
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def _content(model, i: int, role: str, parts: list, prompt: ChatPrompt) -> str:
    """A message's content parts as text: text parts joined by newlines, each media part the
    model's placeholder (written against its neighbours, as Gemma's chat templates do), its bytes
    appended to the prompt's images or audio."""
    pieces: list[tuple[bool, str]] = []  # (is text, text)
    for part in parts:
        kind = part.type
        if kind in MEDIA_PARTS:
            modality = _modality(model, i, role, kind)
            data = _image_bytes(i, part.image_url.url) if modality == "image" else _audio_bytes(i, part.input_audio)
            (prompt.images if modality == "image" else prompt.audio).append(data)
            pieces.append((False, _placeholder(model, modality)))
        elif kind == "text":
            pieces.append((True, part.text))
        else:
            taken = "".join(f" or {k} parts" for k, m in TAKEN_PARTS.items() if m in input_modalities(model))
            raise ApiError(400, f"messages[{i}] content parts must be {{'type': 'text', 'text': ...}}{taken}",
                           "messages")
    text = ""
    for k, (is_text, piece) in enumerate(pieces):
        text += ("\n" if k and is_text and pieces[k - 1][0] else "") + piece
    return text


def _modality(model, i: int, role: str, kind: str) -> str:
    """The modality of a media part this artifact takes (ApiError otherwise)."""
    taken = input_modalities(model)
    if len(taken) == 1:
        raise ApiError(400, f"messages[{i}] has a {kind} part; this artifact is a text-only model", "messages",
                       "unsupported_content")
    modality = TAKEN_PARTS.get(kind)
    if modality is None:
        raise ApiError(400, f"messages[{i}] has a {kind} part; this server takes "
                       + " and ".join(k for k, m in TAKEN_PARTS.items() if m in taken) + " parts", "messages",
                       "unsupported_content")
    if modality not in taken:
        raise ApiError(400, f"messages[{i}] has a {kind} part; this artifact takes no {modality} (its model "
                       f"takes {', '.join(taken)})", "messages", "unsupported_content")
    if role != "user":
        raise ApiError(400, f"messages[{i}] has a {kind} part; only user messages take images and audio",
                       "messages", "unsupported_content")
    return modality


def _placeholder(model, modality: str) -> str:
    try:
        return media_placeholder(model.manifest, model.tokenizer, modality)
    except RuntimeInputError as e:
        raise ApiError(400, str(e), "messages") from None


def _image_bytes(i: int, url: str) -> bytes:
    """The image of an image_url part, whose url must be a base64 data: URL."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise ApiError(400, f"messages[{i}]: this server fetches no URLs; send the image inline as a data: URL "
                       "(data:image/png;base64,...)", "messages", "invalid_image_url")
    if scheme != "data":
        raise ApiError(400, f"messages[{i}]: the image url must be a data: URL (data:image/png;base64,...); "
                       "this server reads no files", "messages", "invalid_image_url")
    header, _, data = url[len("data:"):].partition(",")
    fields = header.lower().split(";")
    if not fields[0].startswith("image/") or "base64" not in fields[1:]:
        raise ApiError(400, f"messages[{i}]: the image url must be data:image/<type>;base64,<data>, not "
                       f"data:{header[:40]}", "messages", "invalid_image_url")
    if fields[0][len("image/"):] not in IMAGE_TYPES:
        raise ApiError(400, f"messages[{i}]: unsupported image type {fields[0]} (this server takes "
                       f"{', '.join(IMAGE_TYPES)})", "messages", "invalid_image_format")
    return _base64(i, data, "image")


def _audio_bytes(i: int, audio: api.InputAudio) -> bytes:
    """The clip of an input_audio part: {"data": base64, "format": "wav"}."""
    if audio.format not in AUDIO_FORMATS:
        raise ApiError(400, f"messages[{i}]: unsupported audio format {audio.format!r} (this server takes "
                       f"{', '.join(AUDIO_FORMATS)})", "messages", "invalid_audio_format")
    return _base64(i, audio.data, "audio")


def _base64(i: int, data: str, what: str) -> bytes:
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"messages[{i}]: the {what} data is not valid base64", "messages",
                       "invalid_base64") from None
    if not decoded:
        raise ApiError(400, f"messages[{i}]: empty {what} data", "messages")
    return decoded
