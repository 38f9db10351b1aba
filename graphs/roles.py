"""The model's parameters that quantization treats by role (the tied embedding, the final norm,
Gemma 4's per-layer token table and projection, each layer's expert tables and router, Gemma 3n's
AltUp routers, every product's weight), named from the model definition's own attribute paths: the module
(gemma_graphs.gemma) is built on the meta device for the config and each role is the name
`named_parameters` gives the module it holds. Renaming an attribute renames its role with it; a
role of a feature the config enables always names at least one parameter (tests/test_roles.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import torch
from torch import nn

from gemma_graphs.config import GemmaConfig
from gemma_graphs.gemma import AltUp, Experts, GemmaForCausalLM, Router


@dataclasses.dataclass(frozen=True)
class Roles:
    embedding: str  # the token table, also the tied lm_head
    final_norm: str
    layers: str  # the decoder layers' container: a layer's parameters are f"{layers}.{i}.*"
    products: tuple[str, ...]  # every nn.Linear weight (the graph's MatMuls read them transposed)
    per_layer_table: str | None = None  # Gemma 4's per-layer token table (only ever gathered)
    per_layer_projection: str | None = None
    expert_tables: tuple[str, ...] = ()  # every layer's expert tables [experts, out, in]
    router: tuple[str, ...] = ()  # every parameter of every layer's expert router
    altup: tuple[str, ...] = ()  # every parameter of every layer's AltUp (its routers and coefficients)

    def layer_of(self, parameter: str) -> int | None:
        """The decoder layer a parameter belongs to (None: read before or after the layers)."""
        head, _, rest = parameter.partition(f"{self.layers}.")
        return int(rest.split(".", 1)[0]) if not head and rest else None

    def in_router(self, parameter: str) -> bool:
        """A router parameter, or a graph weight made from one (transposed, packed)."""
        return any(parameter.startswith(name.rsplit(".", 1)[0] + ".") for name in self.router)

    def kept_float(self, parameter: str) -> bool:
        """A parameter (or a graph weight made from one) the quantizers leave in float: a router's,
        whose few weights choose experts or mix AltUp's streams for every token."""
        return self.in_router(parameter) or any(parameter.startswith(name.rsplit(".", 1)[0] + ".")
                                                for name in self.altup)

    def named(self) -> dict[str, tuple[str, ...]]:
        """Each role that names parameters (all but `layers`, a prefix) the config enables, and its names."""
        out = {}
        for field in dataclasses.fields(self):
            if field.name == "layers":
                continue
            value = getattr(self, field.name)
            names = (value,) if isinstance(value, str) else tuple(value or ())
            if names:
                out[field.name] = names
        return out


def roles(cfg: GemmaConfig) -> Roles:
    """The roles of this config's model."""
    return _roles(json.dumps(cfg.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=16)
def _roles(config_json: str) -> Roles:
    cfg = GemmaConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = GemmaForCausalLM(cfg)
    names = {id(p): name for name, p in model.named_parameters()}
    paths = {id(m): name for name, m in model.named_modules()}
    inner = model.model

    def of(module_type: type) -> tuple[str, ...]:
        return tuple(f"{paths[id(m)]}.{n}" for m in model.modules() if isinstance(m, module_type)
                     for n, _ in m.named_parameters())

    per_layer = bool(cfg.hidden_size_per_layer_input)
    return Roles(
        embedding=names[id(inner.embed_tokens.weight)],
        final_norm=names[id(inner.norm.weight)],
        layers=paths[id(inner.layers)],
        products=tuple(names[id(m.weight)] for m in model.modules() if isinstance(m, nn.Linear)),
        per_layer_table=names[id(inner.embed_tokens_per_layer.weight)] if cfg.vocab_size_per_layer_input else None,
        per_layer_projection=names[id(inner.per_layer_model_projection.weight)] if per_layer else None,
        expert_tables=of(Experts),
        router=of(Router),
        altup=of(AltUp))
