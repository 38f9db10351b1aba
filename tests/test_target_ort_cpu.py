"""The ort-cpu target against transformers' Gemma classes, fp32, through gemma_runtime (the in-place
cache bound once with IOBinding)."""

from collections import Counter

import onnx
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.frontend.onnx_ops import DOMAIN
from gemma_export.targets import ExportOptions
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import CONFIGS, hf_model

NAMES = list(CONFIGS)
MAX_SEQ_LEN = 64


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("ort_cpu")
    for name in NAMES:
        export(tiny_checkpoints[name], root / name, ExportOptions(target="ort-cpu", max_seq_len=MAX_SEQ_LEN))
    return {name: root / name for name in NAMES}


@pytest.fixture(scope="module")
def models(artifacts):
    return {name: gemma_runtime.load(artifacts[name], threads=1) for name in NAMES}


@pytest.fixture(scope="module")
def references():
    return {name: hf_model(name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_whole_prompt_matches_transformers(name, models, references):
    ids = prompt(1, 40)  # longer than the tiny sliding window (6)
    assert_fp32_parity(models[name].logits(ids), hf_logits(references[name], ids))


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_through_in_place_cache_matches_transformers(name, models, references):
    ids = prompt(2, 30)
    assert_fp32_parity(stepwise_logits(models[name], ids, prefill=5), hf_logits(references[name], ids)[4:])


@pytest.mark.parametrize("name", NAMES)
def test_ragged_batch_generates_what_each_prompt_generates_alone(name, models):
    model = models[name]
    short, long = prompt(3, 7), prompt(4, 19)
    alone = [model.generate(p, max_new_tokens=12).token_ids for p in (short, long)]
    assert [r.token_ids for r in model.generate([short, long], max_new_tokens=12)] == alone
    assert all(alone)


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
    assert manifest.kv_cache.update == "inplace" and manifest.kv_cache.max_seq_len == MAX_SEQ_LEN
    assert manifest.inputs["past_key.0"].shape == ("batch", cfg["num_kv_heads"], MAX_SEQ_LEN, cfg["head_dim"])

