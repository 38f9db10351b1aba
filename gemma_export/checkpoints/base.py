"""What every checkpoint reader hands the compiler: a config and a lazy weight source."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from gemma_graphs.config import GemmaConfig


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


def check_weights(cfg: GemmaConfig, weights: WeightSource, where: str) -> None:
    """Every expected tensor present with its shape; nothing unexpected left over."""
    from gemma_export.errors import CheckpointError

    from gemma_graphs.gemma import parameter_shapes

    expected = parameter_shapes(cfg)
    have = set(weights.names())
    # A tied lm_head stored anyway is accepted when it is the embedding (checked when read: same shape).
    extra = have - set(expected) - {"lm_head.weight"}
    for name, shape in expected.items():
        if name not in have:
            raise CheckpointError(f"{where}: tensor {name!r} is missing")
        got = tuple(weights.shape(name))
        if got != shape:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {list(got)}, config implies {list(shape)}")
    if extra:
        raise CheckpointError(
            f"{where}: {len(extra)} unexpected tensor(s) for this config, e.g. {sorted(extra)[0]!r}")
