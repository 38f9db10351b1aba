"""A sentence-transformers folder (EmbeddingGemma) -> the embedding model's config, weights,
tokenizer and prompts. modules.json must list a Transformer (a gemma3_text config with
use_bidirectional_attention, read by hf_config.py, or an EmbeddingGemma 2 config, read by
embedding_gemma2.py), a mean Pooling, Dense layers with the identity activation and a Normalize, in
that order; any other module is refused by its name, never dropped. An EmbeddingGemma 2
transformers folder without modules.json is read as its Transformer, mean pooling and Normalize.
Every field of the modules' JSON files is understood or an error, as config.json's are. Both the
5.x layout (sentence_transformers.models.X, pooling_mode_*_tokens flags) and the 6.x one
(sentence_transformers.base.modules..., pooling_mode) are read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


from gemma_export.checkpoints.base import RenamedWeights, WeightSource, check_weights
from gemma_export.checkpoints.embedding_gemma2 import MODEL_TYPES as EMBEDDING_GEMMA2_TYPES
from gemma_export.checkpoints.embedding_gemma2 import Body, is_embedding_gemma2, open_body
from gemma_export.checkpoints.hf_config import Fields, parse_hf_config
from gemma_export.checkpoints.json_files import read_json
from gemma_export.checkpoints.safetensors_dir import folder_weights
from gemma_export.errors import CheckpointError, ConfigError, names
from gemma_graphs.config import Dense, EmbeddingConfig, GemmaConfig
from gemma_runtime.tokenizer import SENTENCEPIECE_FILE, TOKENIZER_JSON_FILE, Tokenizer

MODULES_FILE = "modules.json"
MODULE_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")
IDENTITY = "torch.nn.modules.linear.Identity"
_SECTIONS = ("sentence_embedding", "token_embeddings")  # module_input_name / module_output_name values


def is_sentence_transformers_folder(path: Path | str | None) -> bool:
    return path is not None and (Path(path) / MODULES_FILE).is_file()


def is_embedding_folder(path: Path | str | None) -> bool:
    """A sentence-transformers folder, or an EmbeddingGemma 2 transformers folder."""
    return path is not None and (is_sentence_transformers_folder(path) or is_embedding_gemma2(Path(path)))


def open_embedding_folder(folder: Path) -> EmbeddingSource:
    if is_sentence_transformers_folder(folder):
        return open_sentence_transformers(folder)
    body, max_len = _transformer(folder)
    return _source(folder, body, (), max_len, ("transformers " + body.text.family, "mean pooling", "Normalize"))


@dataclasses.dataclass
class EmbeddingSource:
    """A sentence-transformers folder opened for export."""

    config: EmbeddingConfig
    weights: WeightSource  # GemmaEmbedder's parameter names
    tokenizer_file: tuple[str, bytes] | None  # (artifact file name, bytes)
    prompts: dict[str, str]
    default_prompt_name: str | None
    prefix_ids: tuple[int, ...]  # what the tokenizer puts around a text (BOS; EmbeddingGemma's EOS after)
    suffix_ids: tuple[int, ...]
    max_seq_length: int | None  # the folder's own limit, if it states one
    modules: tuple[str, ...]  # the modules.json types, in order
    fingerprints: dict[str, str]
    description: str
    skipped: tuple[str, ...] = ()  # the checkpoint's towers not exported ("vision", "audio")

    def tokenizer(self) -> Tokenizer | None:
        return None if self.tokenizer_file is None else Tokenizer(*self.tokenizer_file, self.config.text.bos_token_id,
                                                                  self.description)


def open_sentence_transformers(folder: Path) -> EmbeddingSource:
    modules = _modules(folder)
    kinds = [kind for kind, _, _ in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[-1] != "Normalize" or set(kinds[2:-1]) - {"Dense"}:
        raise CheckpointError(f"{folder / MODULES_FILE}: modules {', '.join(kinds)} are not supported (an embedding "
                              "model here is Transformer, Pooling, Dense..., Normalize)")
    body, max_len = _transformer(modules[0][1])
    width = body.head[-1].out_features if body.head else body.text.hidden_size
    _pooling(modules[1][1], width)
    dense, dense_weights, fingerprints = [], {}, {}
    for i, (_, path, _) in enumerate(modules[2:-1], start=len(body.head)):
        layer, source, prints = _dense(path, dense[-1].out_features if dense else width)
        dense.append(layer)
        dense_weights[f"dense.{i}.weight"] = (source, "linear.weight")
        if layer.bias:
            dense_weights[f"dense.{i}.bias"] = (source, "linear.bias")
        fingerprints.update({f"{path.name}/{name}": v for name, v in prints.items()})
    _normalize(modules[-1][1])
    body = dataclasses.replace(body, fingerprints={**body.fingerprints, **fingerprints})
    return _source(folder, body, tuple(dense), max_len, tuple(t for _, _, t in modules), dense_weights)


def _source(folder: Path, body: Body, dense: tuple[Dense, ...], max_len: int | None, modules: tuple[str, ...],
            dense_weights: dict | None = None) -> EmbeddingSource:
    """The source of a body with its head, the folder's prompts and tokenizer."""
    cfg = EmbeddingConfig(body.text, (*body.head, *dense))
    weights = RenamedWeights({**body.names, **(dense_weights or {})})
    _check_head(cfg, weights, str(folder))
    prompts, default = _prompts(folder)
    sentence_transformers = is_sentence_transformers_folder(folder)
    body_dir = _modules(folder)[0][1] if sentence_transformers else folder
    kind = "sentence-transformers" if sentence_transformers else "transformers"
    tokenizer_file = _tokenizer_file(body_dir)
    prefix, suffix = _framing(body_dir, body.text)
    return EmbeddingSource(cfg, weights, tokenizer_file, prompts, default, prefix, suffix, max_len, modules,
                           body.fingerprints, f"{kind} folder {folder}", body.skipped)


def _modules(folder: Path) -> list[tuple[str, Path, str]]:
    """(kind, folder, type) per module, in the order modules.json gives them."""
    where = folder / MODULES_FILE
    listed = read_json(where)
    if not isinstance(listed, list) or not listed:
        raise ConfigError(f"{where}: expected a non-empty list of modules")
    out = []
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: module {i} is not an object")
        f = Fields(entry, f"{where} module {i}")
        kind_path = f.take("type", str, required=True)
        path = f.take("path", str, required=True)
        f.take("idx", int, None)
        f.take("name", str, None)
        f.take("kwargs", list, None)  # the names of forward() keyword arguments (sentence-transformers 5.x)
        f.finish()
        kind = kind_path.rsplit(".", 1)[-1]
        if not kind_path.startswith("sentence_transformers.") or kind not in MODULE_KINDS:
            raise ConfigError(f"{where}: module {i} ({names([kind_path])}) is not supported (supported: "
                              f"{', '.join(MODULE_KINDS)})")
        # Normalize saves nothing: its folder is empty, and hubs drop empty folders
        if path.startswith("/") or "\\" in path or ".." in Path(path).parts \
                or not ((folder / path).is_dir() or kind == "Normalize"):
            raise ConfigError(f"{where}: module {i} path {path!r} is not a folder inside {folder}")
        out.append((kind, folder / path, kind_path))
    return out


def _module_config(path: Path, file: str = "config.json") -> Fields:
    where = path / file
    data = read_json(where) if where.is_file() else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    return Fields(data, str(where))


def _sections(f: Fields) -> None:
    """sentence-transformers 6.x's names of what a module reads and writes: the standard ones only."""
    for name in ("module_input_name", "module_output_name"):
        f.expect(name, _SECTIONS)


def _transformer(path: Path) -> tuple[Body, int | None]:
    """The body (EmbeddingGemma's Gemma 3, or EmbeddingGemma 2's) and the folder's max_seq_length
    (sentence_bert_config.json, else the tokenizer's model_max_length), if stated."""
    raw = read_json(path / "config.json") if (path / "config.json").is_file() else None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path / 'config.json'}: the Transformer module needs a config.json object")
    body = open_body(path) if raw.get("model_type") in EMBEDDING_GEMMA2_TYPES else _gemma3_body(raw, path)
    f = _module_config(path, "sentence_bert_config.json")
    max_len = f.take("max_seq_length", int, None)
    f.expect("do_lower_case", (False,))
    f.expect("transformer_task", ("feature-extraction",))
    f.expect("modality_config", ({"text": {"method": "forward", "method_output_name": "last_hidden_state"}},))
    f.expect("module_output_name", ("token_embeddings",))
    f.take("model_args", dict, None)  # how sentence-transformers loads the model: nothing to compute with
    f.take("tokenizer_args", dict, None)
    f.take("config_args", dict, None)
    f.take("processing_kwargs", dict, None)
    f.finish()
    if max_len is None and (path / "tokenizer_config.json").is_file():
        tokenizer_config = read_json(path / "tokenizer_config.json")
        limit = tokenizer_config.get("model_max_length") if isinstance(tokenizer_config, dict) else None
        max_len = limit if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < 2**31 else None
    if max_len is not None and max_len < 1:
        raise ConfigError(f"{path / 'sentence_bert_config.json'}: max_seq_length must be positive, got {max_len}")
    return body, max_len


def _gemma3_body(raw: dict, path: Path) -> Body:
    text = parse_hf_config(raw, str(path / "config.json"), bidirectional_body=True)
    weights, prints = folder_weights(path)
    names = {("model." + n if not n.startswith("model.") else n): (weights, n) for n in weights.names()}
    check_weights(text, RenamedWeights(names), str(path))
    return Body(text, (), names, prints, ())


def _pooling(path: Path, hidden: int) -> None:
    """Mean pooling over every real token (the prompt's included) is the one supported."""
    f = _module_config(path)
    width = f.take("embedding_dimension", int, None)
    old_width = f.take("word_embedding_dimension", int, None)
    if (width or old_width) != hidden:
        raise ConfigError(f"{f.where}: pooling dimension {width or old_width} is not the model's hidden size {hidden}")
    modes = [f.take("pooling_mode", (str, list), None)]
    for name in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken"):
        if f.take(f"pooling_mode_{name}", bool, False):
            modes.append(name.removesuffix("_tokens"))
    modes = [m for m in modes if m is not None]
    if modes not in (["mean"], [["mean"]]):
        raise ConfigError(f"{f.where}: pooling {modes} is not supported (mean)")
    if f.take("include_prompt", bool, True) is not True:
        raise ConfigError(f"{f.where}: include_prompt = false (pooling without the prompt's tokens) is not supported")
    _sections(f)
    f.finish()


def _dense(path: Path, in_features: int) -> tuple[Dense, WeightSource, dict[str, str]]:
    f = _module_config(path)
    layer = Dense(f.take("in_features", int, required=True), f.take("out_features", int, required=True),
                  f.take("bias", bool, True))
    activation = f.take("activation_function", str, IDENTITY)
    if activation != IDENTITY:
        raise ConfigError(f"{f.where}: activation_function {names([activation])} is not supported ({IDENTITY})")
    _sections(f)
    f.finish()
    if layer.in_features != in_features or layer.out_features < 1:
        raise ConfigError(f"{f.where}: in_features {layer.in_features} does not follow the previous width "
                          f"{in_features}")
    weights, prints = folder_weights(path)
    return layer, weights, prints


def _normalize(path: Path) -> None:
    f = _module_config(path)
    _sections(f)
    f.finish()


def _check_head(cfg: EmbeddingConfig, weights: WeightSource, where: str) -> None:
    from gemma_graphs.embedding import parameter_shapes

    have = set(weights.names())
    for name, shape in parameter_shapes(cfg).items():
        if name not in have:
            raise CheckpointError(f"{where}: tensor {name!r} is missing")
        if tuple(weights.shape(name)) != shape:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {list(weights.shape(name))}, the modules' "
                                  f"configs imply {list(shape)}")
    extra = sorted(have - set(parameter_shapes(cfg)))
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor(s), e.g. {extra[0]!r}")


def _prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    path = folder / "config_sentence_transformers.json"
    f = _module_config(folder, path.name)
    prompts = f.take("prompts", dict, {}) or {}
    default = f.take("default_prompt_name", str, None)
    f.take("__version__", dict, None)
    f.expect("model_type", ("SentenceTransformer",))
    f.expect("similarity_fn_name", (None, "cosine", "dot"))  # the same on unit vectors
    f.finish()
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ConfigError(f"{path}: prompts must map names to strings")
    if default is not None and default not in prompts:
        raise ConfigError(f"{path}: default_prompt_name {default!r} is not one of the prompts")
    return dict(prompts), default


def _tokenizer_file(folder: Path) -> tuple[str, bytes] | None:
    for name in (SENTENCEPIECE_FILE, TOKENIZER_JSON_FILE):
        if (folder / name).is_file():
            return name, (folder / name).read_bytes()
    return None


def _framing(folder: Path, text: GemmaConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids the folder's tokenizer puts before and after a text: tokenizer.json's post-processor
    where there is one (what sentence-transformers runs), else tokenizer_config.json's
    add_bos_token / add_eos_token (GemmaTokenizer: BOS yes, EOS no, by default)."""
    path = folder / TOKENIZER_JSON_FILE
    if path.is_file():
        import tokenizers

        try:
            tokenizer = tokenizers.Tokenizer.from_str(path.read_text())
        except Exception as e:  # the tokenizers package raises its own types
            raise CheckpointError(f"{path}: not a tokenizer.json ({str(e).splitlines()[0] if str(e) else e})") from None
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        framed = tokenizer.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(framed) - len(bare) + 1) if framed[i:i + len(bare)] == bare), None)
        if at is None:
            raise CheckpointError(f"{path}: its post-processor changes the text's own tokens; not supported")
        return tuple(framed[:at]), tuple(framed[at + len(bare):])
    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if not isinstance(config, dict):
        raise ConfigError(f"{folder / 'tokenizer_config.json'}: expected a JSON object")
    bos, eos = config.get("add_bos_token", True), config.get("add_eos_token", False)
    if not isinstance(bos, bool) or not isinstance(eos, bool):
        raise ConfigError(f"{folder / 'tokenizer_config.json'}: add_bos_token / add_eos_token must be true or false")
    return ((text.bos_token_id,) if bos else ()), ((text.eos_token_id,) if eos else ())


def describe_modules(source: EmbeddingSource) -> dict[str, Any]:
    """The manifest's record of the folder's modules, for people."""
    return {"modules": list(source.modules), "pooling": "mean",
            "dense": [dataclasses.asdict(d) for d in source.config.dense], "normalize": True,
            "skipped_towers": list(source.skipped)}
