"""manifest.json as typed data: what an artifact is and everything the runtime needs to run it.

The exporter writes it (Manifest.to_json) and the runtime reads it (read_manifest); both sides
use these classes, so a field is named in one place. Format version 2 lists the KV cache as
buffers: each with its graph names, shape, dtype, layout and the layers that write and read it.
The backends allocate and bind exactly these buffers; nothing counts layers to find caches.
Format version 3 adds the size and sha256 of each file the export wrote (`files`). Format
version 4 makes an artifact a set of named graphs (`graphs`: each with its role, files, inputs
and outputs; today one, "decoder") in place of the top-level `inputs`/`outputs`, and records the
chat format (`chat`). The KV cache (`kv_cache`) is the decoder's. Format version 5 records the
checkpoint's own chat template (`chat_template`: its files in the artifact and the special tokens it
reads), which the runtime renders in place of `chat` when present. Format version 6 adds embedding
models: such an artifact holds one graph of role embedding_head in place of the decoder, no KV cache
buffers (kv_cache.max_seq_len is the longest text), and `embedding` (its dimensions, prompts and the
ids the tokenizer puts around a text). This runtime reads versions 2 to 6: a version 2 or 3 manifest is read as one decoder graph (model.onnx) with no chat format (the
runtime recovers it from the tokenizer's turn pieces; see chat.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import DECODER, EMBEDDING_HEAD, ROLES, CacheTensor

FORMAT_VERSION = 6
READABLE_VERSIONS = (2, 3, 4, 5, 6)
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"

CACHE_UPDATES = ("concat", "inplace")  # present = past + new (a new tensor), or past updated in place


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[int | str, ...]  # a str is a symbolic dim ("batch", "seq", ...)


@dataclasses.dataclass(frozen=True)
class Graph:
    """One graph of the artifact: what it is for (interface.ROLES), its files, its interface."""

    role: str
    file: str
    data_file: str | None  # its external weights, if any
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


SYSTEM_PLACEMENTS = ("first_user_turn",)  # Gemma has no system role: the prompt opens the first user turn


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """How a conversation is written as text: every turn is `{turn_start}{role}\n{text}{turn_end}\n`."""

    turn_start: str
    turn_end: str
    model_role: str  # the role name of the model's turns ("assistant" messages)
    system: str  # see SYSTEM_PLACEMENTS


@dataclasses.dataclass(frozen=True)
class ChatTemplateSpec:
    """The checkpoint's own chat template(s), copied into the artifact (runtime: chat_template.py)."""

    files: dict[str, str]  # template name ("default", "tool_use", ...) -> its file in the artifact
    special_tokens: dict[str, str]  # bos_token, eos_token, ...: the variables the template reads, as the checkpoint names them
    source: str  # where the export found it: chat_template.jinja, tokenizer_config.json, the GGUF metadata


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """An embedding model's use: a text is prompt + text, tokenized, between prefix_ids and
    suffix_ids (as the checkpoint's tokenizer frames it); the graph gives unit vectors of
    `dimensions`, which may be cut to their first n and normalized again (Matryoshka)."""

    dimensions: int
    prompts: dict[str, str]  # name ("query", "document", ...) -> the text put before the input
    default_prompt_name: str | None
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class KVCache:
    update: str  # see CACHE_UPDATES
    max_seq_len: int  # the longest sequence the artifact accepts (static caches: their full length)
    buffers: tuple[CacheTensor, ...]


@dataclasses.dataclass(frozen=True)
class Execution:
    """Where the artifact runs: runtime backends and onnxruntime devices, each default first."""

    backends: tuple[str, ...]
    devices: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Tokens:
    bos: int
    eos: int
    pad: int
    start_of_turn: int | None = None  # the family's chat-turn pieces (Gemma 4: <|turn>, <turn|>)
    end_of_turn: int | None = None
    stop: tuple[int, ...] = ()  # every id that ends generation (eos, the turn end, ...)


@dataclasses.dataclass(frozen=True)
class FileDigest:
    """A file of the artifact as the export wrote it (hashed while writing)."""

    size: int
    sha256: str  # hex


@dataclasses.dataclass(frozen=True)
class Manifest:
    format_version: int
    producer: str
    family: str
    config: dict[str, Any]  # the normalized model config
    target: str
    dtype: str
    quant: dict[str, Any]
    graphs: dict[str, Graph]  # name -> graph; the KV cache below is the decoder's
    kv_cache: KVCache
    execution: Execution
    tokens: Tokens
    generation_config: dict[str, Any] | None
    passes: list[dict[str, Any]]
    report: dict[str, Any]  # what passes measured or decided, for people (inspect)
    sources: dict[str, str]  # file name -> fingerprint
    source: str
    engines: tuple[dict[str, Any], ...] = ()
    export_seconds: float | None = None
    # a multimodal checkpoint: {"model_type", "towers", "skipped": towers not exported (--text-only),
    # "placeholder_ids": {config field: id}, and per exported modality ("image", "audio") {"kind",
    # "processing": the processor's settings, "token_id", "begin_id", "end_id", ...}}; placeholder
    # ids of a modality not exported are refused in prompts
    multimodal: dict[str, Any] | None = None
    # file name -> what the export wrote (model, weights, tokenizer; not manifest.json itself)
    files: dict[str, FileDigest] = dataclasses.field(default_factory=dict)
    chat: ChatFormat | None = None  # None in manifests before version 4
    # the checkpoint's chat template, rendered in place of `chat` where present (a checkpoint may ship
    # none; none in manifests before version 5)
    chat_template: ChatTemplateSpec | None = None
    embedding: EmbeddingSpec | None = None  # an embedding model (format 6); None: a decoder

    @property
    def decoder(self) -> Graph:
        return next(g for g in self.graphs.values() if g.role == DECODER)

    @property
    def embedder(self) -> Graph:
        return next(g for g in self.graphs.values() if g.role == EMBEDDING_HEAD)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict):
            raise RuntimeInputError(f"{where}: not a manifest (expected a JSON object)")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            hint = " (written by an older gemma-export: export it again with this version)" \
                if isinstance(version, int) and version < READABLE_VERSIONS[0] else ""
            raise RuntimeInputError(f"{where}: format_version {version!r} is not supported by this runtime "
                                    f"(it reads {READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}){hint}")
        try:
            kv = data["kv_cache"]
            fields = {k: v for k, v in data.items() if k not in ("inputs", "outputs")}
            fields.update({
                "graphs": _graphs(data),
                "kv_cache": KVCache(kv["update"], int(kv["max_seq_len"]),
                                    tuple(_buffer(b) for b in kv["buffers"])),
                "execution": Execution(tuple(data["execution"]["backends"]), tuple(data["execution"]["devices"])),
                "tokens": Tokens(**{**data["tokens"], "stop": tuple(data["tokens"].get("stop", ()))}),
                "engines": _engines(data.get("engines", [])),
                "files": _files(data.get("files", {})),
                "chat": None if data.get("chat") is None else ChatFormat(**data["chat"]),
                "chat_template": _chat_template(data.get("chat_template")),
                "embedding": _embedding(data.get("embedding")),
            })
            manifest = cls(**fields)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise RuntimeInputError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
        if manifest.kv_cache.update not in CACHE_UPDATES:
            raise RuntimeInputError(f"{where}: KV-cache update {manifest.kv_cache.update!r} is not supported "
                                    f"(supported: {', '.join(CACHE_UPDATES)})")
        roles = [g.role for g in manifest.graphs.values()]
        unknown = [r for r in roles if r not in ROLES]
        main = EMBEDDING_HEAD if manifest.embedding is not None else DECODER
        if unknown or roles.count(main) != 1 or (main == EMBEDDING_HEAD and len(roles) != 1):
            raise RuntimeInputError(f"{where}: graphs with roles {roles} (a decoder artifact has one {DECODER}, an "
                                    f"embedding artifact one {EMBEDDING_HEAD} alone; roles among {', '.join(ROLES)})")
        if manifest.chat is not None and manifest.chat.system not in SYSTEM_PLACEMENTS:
            raise RuntimeInputError(f"{where}: chat system placement {manifest.chat.system!r} is not supported "
                                    f"(supported: {', '.join(SYSTEM_PLACEMENTS)})")
        return manifest


def _specs(d: dict) -> dict[str, TensorSpec]:
    return {name: TensorSpec(spec["dtype"], tuple(spec["shape"])) for name, spec in d.items()}


def _graphs(data: dict) -> dict[str, Graph]:
    if data["format_version"] < 4 and "graphs" not in data:  # one decoder graph, its interface at the top level
        files = data.get("files")
        data_file = DATA_FILE if files is None or DATA_FILE in files else None
        return {DECODER: Graph(DECODER, MODEL_FILE, data_file, _specs(data["inputs"]), _specs(data["outputs"]))}
    return {name: Graph(g["role"], file_name(g["file"], f"graph {name!r}"),
                        None if g["data_file"] is None else file_name(g["data_file"], f"graph {name!r}"),
                        _specs(g["inputs"]), _specs(g["outputs"]))
            for name, g in data["graphs"].items()}


def file_name(value: object, what: str) -> str:
    """A file of the artifact's own folder, by plain name: a manifest may not lead the runtime
    elsewhere (a path, `..`, an absolute name), whichever entry names it."""
    if not (isinstance(value, str) and value and "/" not in value and "\\" not in value and value not in (".", "..")
            and "\0" not in value):
        raise ValueError(f"{what} names {value!r}, not a file name of the artifact")
    return value


def _engines(entries: list) -> tuple[dict[str, Any], ...]:
    for entry in entries:
        file_name(entry["file"], "an engine entry")
    return tuple(entries)


def _files(d: dict) -> dict[str, FileDigest]:
    return {name: FileDigest(int(f["size"]), str(f["sha256"])) for name, f in d.items()}


def _chat_template(d: dict | None) -> ChatTemplateSpec | None:
    if d is None:
        return None
    spec = ChatTemplateSpec(dict(d["files"]), dict(d["special_tokens"]), str(d["source"]))
    for name, file in spec.files.items():
        if not isinstance(name, str):
            raise ValueError(f"chat template name {name!r} is not a string")
        file_name(file, f"chat template {name!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in spec.special_tokens.items()):
        raise ValueError("chat template special tokens are not names and strings")
    return spec


def _embedding(d: dict | None) -> EmbeddingSpec | None:
    if d is None:
        return None
    spec = EmbeddingSpec(int(d["dimensions"]), dict(d["prompts"]), d["default_prompt_name"],
                         tuple(int(i) for i in d["prefix_ids"]), tuple(int(i) for i in d["suffix_ids"]))
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in spec.prompts.items()):
        raise ValueError("embedding prompts are not names and strings")
    if spec.default_prompt_name is not None and spec.default_prompt_name not in spec.prompts:
        raise ValueError(f"the default prompt {spec.default_prompt_name!r} is not one of the prompts")
    if spec.dimensions < 1:
        raise ValueError(f"embedding dimensions {spec.dimensions}")
    return spec


def _buffer(b: dict) -> CacheTensor:
    return CacheTensor(b["name"], b["kind"], tuple(b["shape"]), tuple(b["written_by"]), tuple(b["read_by"]),
                       b["dtype"], b["layout"])


def read_manifest(folder: Path | str) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeInputError(f"{folder}: not an artifact (no {MANIFEST_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RuntimeInputError(f"{path}: unreadable ({e})") from None
    return Manifest.from_json(data, str(path))


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (Path(folder) / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
