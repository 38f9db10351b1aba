"""The checkpoint's own chat template, found where transformers finds it and checked to parse
before anything slow runs; export.py copies it into the artifact (gemma_runtime/chat_template.py
renders it).

An HF folder: `chat_template.jinja` (the default) and `additional_chat_templates/NAME.jinja`, which
take priority, else `chat_template` in tokenizer_config.json: a string, or a list of
{"name", "template"} (the one named "default" and the others by name, e.g. "tool_use"). A GGUF
file: `tokenizer.chat_template` and llama.cpp's named `tokenizer.chat_template.NAME`. The special
tokens a template reads (`bos_token`, ...) are the tokenizer config's, else the pieces of the
config's ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gguf

from gemma_export.checkpoints.json_files import read_json
from gemma_export.errors import CheckpointError
from gemma_runtime.chat_template import DEFAULT, TEMPLATE_NAME, compile_template
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import ChatTemplateSpec
from gemma_runtime.tokenizer import Tokenizer

TEMPLATE_FILE, TEMPLATE_DIR, TOKENIZER_CONFIG = "chat_template.jinja", "additional_chat_templates", "tokenizer_config.json"
# transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES), passed to every template
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_GGUF_KEY = "tokenizer.chat_template"
_GGUF_TOKEN_IDS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                   "unk_token": "tokenizer.ggml.unknown_token_id", "pad_token": "tokenizer.ggml.padding_token_id"}


@dataclasses.dataclass(frozen=True)
class CheckpointTemplate:
    """A checkpoint's chat templates as found (each parsed once, in the runtime's sandbox)."""

    templates: dict[str, str]  # name -> Jinja text, DEFAULT among them
    special_tokens: dict[str, str]  # what the checkpoint names (may lack some; filled from the tokenizer)
    source: str  # where it was found, for the manifest: a file name or a GGUF key

    def artifact_files(self) -> dict[str, str]:
        """template name -> its file name in the artifact."""
        return {name: TEMPLATE_FILE if name == DEFAULT else f"chat_template.{name}.jinja" for name in self.templates}

    def for_artifact(self, tokenizer: Tokenizer | None, bos_id: int, eos_id: int
                     ) -> tuple[ChatTemplateSpec, dict[str, bytes]]:
        """The manifest's record and the files to write (file name -> bytes). bos_token and eos_token
        missing from the checkpoint's names are the tokenizer's pieces of the config's ids."""
        tokens = dict(self.special_tokens)
        if tokenizer is not None:
            for name, token_id in (("bos_token", bos_id), ("eos_token", eos_id)):
                if name not in tokens and 0 <= token_id < tokenizer.vocab_size:
                    tokens[name] = tokenizer.piece(token_id)
        files = self.artifact_files()
        data = {files[name]: text.encode() for name, text in self.templates.items()}
        return ChatTemplateSpec(files, tokens, self.source), data


def hf_folder_template(folder: Path) -> CheckpointTemplate | None:
    """The folder's chat template, None where it ships none; CheckpointError naming the file where one
    does not parse or is malformed."""
    found: dict[str, tuple[str, str]] = {}  # name -> (Jinja text, where it is, for messages)
    default = folder / TEMPLATE_FILE
    if default.is_file():
        found[DEFAULT] = _read_text(default), str(default)
    extra = folder / TEMPLATE_DIR
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            found[path.name.removesuffix(".jinja")] = _read_text(path), str(path)
    config_path = folder / TOKENIZER_CONFIG
    config = read_json(config_path, CheckpointError) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object")
    if found:
        source, holder = TEMPLATE_FILE, folder
    elif config.get("chat_template") is not None:
        source, holder = TOKENIZER_CONFIG, config_path
        found = {name: (text, str(config_path) + ("" if name == DEFAULT else f" (chat template {name!r})"))
                 for name, text in _config_templates(config["chat_template"], config_path).items()}
    else:
        return None
    return _checked(found, _config_special_tokens(config, config_path), source, holder)


def gguf_template(fields: dict[str, Any], where: str) -> CheckpointTemplate | None:
    """A GGUF file's chat template (its reader's fields), None where it has none."""
    if _GGUF_KEY not in fields:
        return None
    keys = {DEFAULT: _GGUF_KEY, **{k[len(_GGUF_KEY) + 1:]: k for k in fields if k.startswith(_GGUF_KEY + ".")}}
    found = {name: (_gguf_string(fields, key, where), f"{where}: metadata {key}") for name, key in keys.items()}
    special = {}
    for name, key in _GGUF_TOKEN_IDS.items():
        piece = _gguf_token(fields.get("tokenizer.ggml.tokens"), _gguf_scalar(fields.get(key)))
        if piece is not None:
            special[name] = piece
    return _checked(found, special, f"GGUF {_GGUF_KEY}", where)


def _checked(found: dict[str, tuple[str, str]], special_tokens: dict[str, str], source: str,
             holder: Path | str) -> CheckpointTemplate:
    """found: name -> (text, where); each name plain and each text parsed in the runtime's sandbox."""
    if DEFAULT not in found:
        raise CheckpointError(f"{holder}: chat templates named {', '.join(sorted(found))}, none {DEFAULT!r} "
                              "(the one used without a choice)")
    for name, (text, where) in found.items():
        if not TEMPLATE_NAME.fullmatch(name):
            raise CheckpointError(f"{where}: chat template name {name!r} is not a plain name (letters, digits, _ -)")
        try:
            compile_template(text, where)
        except RuntimeInputError as e:
            raise CheckpointError(str(e)) from None
    ordered = sorted(found, key=lambda name: name != DEFAULT)
    return CheckpointTemplate({name: found[name][0] for name in ordered}, special_tokens, source)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable chat template ({e})") from None


def _config_templates(value: Any, where: Path) -> dict[str, str]:
    """tokenizer_config.json's chat_template: a string, or a list of {"name", "template"}."""
    if isinstance(value, str):
        return {DEFAULT: value}
    if isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                       and isinstance(t.get("template"), str) for t in value):
        return {t["name"]: t["template"] for t in value}
    raise CheckpointError(f"{where}: chat_template is neither a string nor a list of {{\"name\", \"template\"}}")


def _config_special_tokens(config: dict, where: Path) -> dict[str, str]:
    tokens = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if isinstance(value, dict):  # an AddedToken as transformers saves it
            value = value.get("content")
        if value is None:
            continue
        if not isinstance(value, str):
            raise CheckpointError(f"{where}: {name} is not a string")
        tokens[name] = value
    return tokens


def _gguf_string(fields: dict[str, Any], key: str, where: str) -> str:
    value = _gguf_scalar(fields[key])
    if not isinstance(value, str):
        raise CheckpointError(f"{where}: metadata {key!r} is not a string")
    return value


def _gguf_scalar(field: Any) -> Any:
    if field is None or (field.types and field.types[0] == gguf.GGUFValueType.ARRAY):
        return None
    try:
        return field.contents()
    except Exception:  # the gguf library raises assorted errors on garbage
        return None


def _gguf_token(tokens: Any, token_id: Any) -> str | None:
    """The vocabulary's piece at token_id (read alone: the vocabulary has 262k pieces), else None."""
    if tokens is None or not isinstance(token_id, int) or not 0 <= token_id < len(tokens.data):
        return None
    try:
        piece = tokens.contents(token_id)
    except Exception:  # the gguf library raises assorted errors on garbage
        return None
    return piece if isinstance(piece, str) else None
