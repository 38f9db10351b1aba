"""What the ort-cpu target's graph is made of (its parity with transformers is in the conformance
suite, tests/test_conformance.py)."""

from collections import Counter

import onnx
import pytest

import gemma_runtime
from conftest import CONFORMANCE_MAX_SEQ_LEN
from gemma_export.frontend.onnx_ops import DOMAIN
from tiny import CONFIGS

NAMES = list(CONFIGS)


@pytest.fixture(scope="module")
def artifacts(target_artifacts):
    return target_artifacts("ort-cpu")


@pytest.fixture(scope="module")
def models(artifacts):
    return {name: gemma_runtime.load(artifacts[name], threads=1) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_graph_is_fused_onnxruntime_ops(name, artifacts, models):
    graph = onnx.load(artifacts[name] / "model.onnx", load_external_data=False)
    ops = Counter(node.op_type for node in graph.graph.node)
    cfg = models[name].manifest.config
    assert ops["GroupQueryAttention"] == cfg["num_layers"]
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * cfg["num_layers"] - 1  # the last add feeds the final norm
    assert ops["Gelu"] == cfg["num_layers"] and ops["Gemm"] == 1  # tied lm_head
    # packed projections: q/k/v (one MatMul, read whole by GroupQueryAttention unless QK-norm splits it),
    # gate/up, o, down
    assert ops["MatMul"] == 4 * cfg["num_layers"]
    assert ops["Split"] == cfg["num_layers"] * (2 if cfg["family"] == "gemma3" else 1)
    assert not [n for n in graph.graph.node if n.domain == DOMAIN] and not graph.functions
    manifest = models[name].manifest
    assert manifest.kv_cache.update == "inplace" and manifest.kv_cache.max_seq_len == CONFORMANCE_MAX_SEQ_LEN
    assert manifest.decoder.inputs["past_key.0"].shape == ("batch", cfg["num_kv_heads"], CONFORMANCE_MAX_SEQ_LEN,
                                                           cfg["head_dim"])

