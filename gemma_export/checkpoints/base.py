"""What every checkpoint reader hands the compiler: a config and a lazy weight source."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from gemma_export.config import GemmaConfig


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


def expected_shapes(cfg: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the graph needs, with its shape (HF names)."""
    h, d = cfg.hidden_size, cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    norms = ["input_layernorm", "post_attention_layernorm"]
    if cfg.sandwich_norms:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        for n in norms:
            shapes[p + n + ".weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (cfg.num_heads * d, h)
        shapes[p + "self_attn.k_proj.weight"] = (cfg.num_kv_heads * d, h)
        shapes[p + "self_attn.v_proj.weight"] = (cfg.num_kv_heads * d, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, cfg.num_heads * d)
        if cfg.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (d,)
            shapes[p + "self_attn.k_norm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (cfg.intermediate_size, h)
        shapes[p + "mlp.up_proj.weight"] = (cfg.intermediate_size, h)
        shapes[p + "mlp.down_proj.weight"] = (h, cfg.intermediate_size)
    return shapes


def check_weights(cfg: GemmaConfig, weights: WeightSource, where: str) -> None:
    """Every expected tensor present with its shape; nothing unexpected left over."""
    from gemma_export.errors import CheckpointError

    have = set(weights.names())
    # A tied lm_head stored anyway is accepted when it is the embedding (checked when read: same shape).
    extra = have - set(expected_shapes(cfg)) - {"lm_head.weight"}
    for name, shape in expected_shapes(cfg).items():
        if name not in have:
            raise CheckpointError(f"{where}: tensor {name!r} is missing")
        got = tuple(weights.shape(name))
        if got != shape:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {list(got)}, config implies {list(shape)}")
    if extra:
        raise CheckpointError(
            f"{where}: {len(extra)} unexpected tensor(s) for this config, e.g. {sorted(extra)[0]!r}")
