"""What every checkpoint reader hands the compiler: a config and a lazy weight source."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from gemma_export.checkpoints.chat_template import CheckpointTemplate
from gemma_export.checkpoints.hf_config import Multimodal
from gemma_graphs.config import GemmaConfig
from gemma_runtime.tokenizer import SENTENCEPIECE_FILE, TOKENIZER_JSON_FILE, Tokenizer


_LAYER_NAME = re.compile(r"model\.layers\.([0-9]{1,9})\.")


class WeightSource(Protocol):
    """Tensors by their HF name, read on demand.

    Values follow the HF convention whatever the file stores: norm weights zero-centred
    (the model computes 1 + w), matrices [out, in]. Reads are by ranges of rows (dim 0) so
    that a writer can stream a tensor bigger than the memory budget.
    """

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of dim 0 as float32, shape (stop - start, *shape[1:])."""
        ...


@dataclasses.dataclass
class Source:
    """A checkpoint opened for export."""

    config: GemmaConfig
    weights: WeightSource
    tokenizer_model: bytes | None  # a serialized SentencePiece ModelProto
    generation_config: dict | None
    fingerprints: dict[str, str]  # file name -> "sha256:..." or "size:mtime" (what was read)
    description: str  # for messages: the path and kind of the source
    tokenizer_json: bytes | None = None  # an HF tokenizer.json, where there is no SentencePiece model
    multimodal: Multimodal | None = None  # what a multimodal checkpoint has beside the exported decoder
    folder: Path | None = None  # an HF folder (its processor settings are read from it)
    checkpoint_weights: WeightSource | None = None  # every tensor under its stored name (the encoders' too)
    chat_template: CheckpointTemplate | None = None  # the checkpoint's own, where it ships one

    def tokenizer(self) -> Tokenizer | None:
        """The source's tokenizer as the runtime reads it (BOS from the config)."""
        file = self.tokenizer_file()
        return None if file is None else Tokenizer(*file, self.config.bos_token_id, self.description)

    def tokenizer_file(self) -> tuple[str, bytes] | None:
        """(artifact file name, bytes) of the tokenizer to ship with the artifact."""
        if self.tokenizer_model is not None:
            return SENTENCEPIECE_FILE, self.tokenizer_model
        if self.tokenizer_json is not None:
            return TOKENIZER_JSON_FILE, self.tokenizer_json
        return None


class PrefixedWeights:
    """The text decoder of a multimodal checkpoint under HF's text names: `model.X` is read from
    `prefix + X` (the vision and audio tensors are not listed); a stored lm_head keeps its name."""

    def __init__(self, weights: WeightSource, prefix: str):
        self._weights, self._prefix = weights, prefix
        self._names = {("model." + n[len(prefix):]): n for n in weights.names() if n.startswith(prefix)}
        if "lm_head.weight" in weights.names():
            self._names["lm_head.weight"] = "lm_head.weight"

    def names(self) -> list[str]:
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._weights.shape(self._names[name])

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._weights.read_rows(self._names[name], start, stop)


def text_decoder(weights: WeightSource, prefixes: tuple[str, ...], where: str) -> WeightSource:
    """The decoder's weights under the one prefix this checkpoint uses (transformers versions saved
    multimodal Gemma under different ones); a checkpoint using two is refused."""
    from gemma_export.errors import CheckpointError

    names = weights.names()
    used = [p for p in prefixes if any(n.startswith(p) for n in names)]
    if len(used) > 1:
        raise CheckpointError(f"{where}: text decoder weights under two prefixes ({', '.join(used)}); "
                              "a checkpoint uses one")
    if not used:
        raise CheckpointError(f"{where}: no text decoder weights (expected names under {' or '.join(prefixes)})")
    return PrefixedWeights(weights, used[0])


def check_weights(cfg: GemmaConfig, weights: WeightSource, where: str) -> None:
    """Every expected tensor present with its shape; nothing unexpected left over."""
    from gemma_export.errors import CheckpointError

    from gemma_graphs.gemma import parameter_shapes, unread_parameters

    have = set(weights.names())
    layers = {int(m.group(1)) for m in map(_LAYER_NAME.match, have) if m}
    if layers != set(range(cfg.num_layers)):  # before building the module: the config's count may be a lie
        raise CheckpointError(f"{where}: the config has {cfg.num_layers} layers; the checkpoint has weights for "
                              f"{len(layers)}")
    expected = parameter_shapes(cfg)
    # A tied lm_head stored anyway is accepted when it is the embedding (checked when read: same shape).
    extra = have - set(expected) - {"lm_head.weight"} - unread_parameters(cfg)
    for name, shape in expected.items():
        if name not in have:
            raise CheckpointError(f"{where}: tensor {name!r} is missing")
        got = tuple(weights.shape(name))
        if got != shape:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {list(got)}, config implies {list(shape)}")
    if extra:
        raise CheckpointError(
            f"{where}: {len(extra)} unexpected tensor(s) for this config, e.g. {sorted(extra)[0]!r}")


class RenamedWeights:
    """A WeightSource whose tensors are other sources' tensors under new names."""

    def __init__(self, names: dict[str, tuple[WeightSource, str]]):
        self._names = names

    def names(self) -> list[str]:
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        source, stored = self._names[name]
        return tuple(source.shape(stored))

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        source, stored = self._names[name]
        return source.read_rows(stored, start, stop)
