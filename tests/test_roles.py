"""The model's quantization roles (graphs/roles.py), named from its own attribute paths: every role a
config enables names weights its checkpoint holds, and a role that matches none fails here."""

import pytest

from gemma_export.checkpoints import open_source
from gemma_graphs import gemma, roles
from tiny import FAMILY_CONFIGS, write_checkpoint


def unmatched(named: roles.Roles, weights: set[str]) -> list[str]:
    """The roles none of whose names is a weight of the checkpoint."""
    return [role for role, names in named.named().items() if not weights & set(names)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("roles")
    return {name: open_source(write_checkpoint(name, root / name)) for name in FAMILY_CONFIGS}


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_every_role_the_config_enables_names_checkpoint_weights(name, sources):
    source = sources[name]
    cfg = source.config
    named = roles.roles(cfg)
    enabled = set(named.named())
    assert {"embedding", "final_norm", "products"} <= enabled
    assert ("per_layer_table" in enabled) == ("per_layer_projection" in enabled) == bool(cfg.hidden_size_per_layer_input)
    assert ("expert_tables" in enabled) == ("router" in enabled) == bool(cfg.num_experts)
    assert ("altup" in enabled) == bool(cfg.altup_num_inputs)
    weights = set(source.weights.names())
    assert unmatched(named, weights) == []
    in_layers = {named.layer_of(n) for n in weights} - {None}
    assert in_layers == set(range(cfg.num_layers))
    assert all(named.in_router(n) for n in named.router) and not named.in_router(named.embedding)
    assert all(named.kept_float(n) for n in (*named.router, *named.altup)) and not named.kept_float(named.embedding)


def test_a_renamed_attribute_leaves_a_role_matching_nothing(sources, monkeypatch):
    """Were the experts' attribute renamed in the model while the checkpoint keeps its names, the
    expert role would name no weight of it: the check above fails."""
    source = sources["gemma4-moe"]
    original = gemma.DecoderLayer.__init__

    def renamed(self, cfg, layer, *rest):
        original(self, cfg, layer, *rest)
        if hasattr(self, "experts"):
            self.moe_experts = self.experts
            del self.experts

    monkeypatch.setattr(gemma.DecoderLayer, "__init__", renamed)
    roles._roles.cache_clear()
    try:
        named = roles.roles(source.config)
        assert named.expert_tables and all(".moe_experts." in n for n in named.expert_tables)
        assert unmatched(named, set(source.weights.names())) == ["expert_tables"]
    finally:
        roles._roles.cache_clear()

