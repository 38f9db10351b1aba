"""The `onnx` target (standard ops only, opset 24, in-place static KV cache) against
transformers' Gemma classes (independent reference), fp32."""

import numpy as np
import onnx
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.describe import describe
from gemma_export.targets import ExportOptions
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import BASE, CONFIGS, hf_model

NAMES = list(CONFIGS)


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-target")
    for name in NAMES:
        export(tiny_checkpoints[name], root / name, ExportOptions(target="onnx"))
    return {name: root / name for name in NAMES}


@pytest.fixture(scope="module")
def models(artifacts):
    return {name: gemma_runtime.load(folder) for name, folder in artifacts.items()}


@pytest.mark.parametrize("name", NAMES)
def test_standard_ops_only(name, artifacts):
    proto = onnx.load(artifacts[name] / "model.onnx", load_external_data=False)
    assert {n.domain for n in proto.graph.node} == {""}  # no com.microsoft, no gemma_export
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 24)}
    assert not proto.functions
    lowered = {"RMSNormalization", "RotaryEmbedding", "Attention", "TensorScatter"}
    assert lowered <= {n.op_type for n in proto.graph.node}


def test_manifest_describes_the_in_place_cache(models):
    manifest = models["gemma-mqa"].manifest
    context = BASE["max_position_embeddings"]  # the default 4096 clamped to the model's context
    assert manifest.kv_cache.update == "inplace" and manifest.kv_cache.max_seq_len == context
    assert manifest.inputs["past_key.0"].shape == ("batch", 1, context, BASE["head_dim"])  # multi-query: one KV head
    assert "attention_mask" not in manifest.inputs
    assert {"past_lengths", "seq_lengths", "logits_index"} <= set(manifest.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_whole_prompt_matches_transformers(name, models):
    ids = prompt(1, 40)  # longer than the tiny sliding window (6)
    assert_fp32_parity(models[name].logits(ids), hf_logits(hf_model(name), ids))


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_through_the_in_place_cache_matches_transformers(name, models):
    ids = prompt(2, 30)
    assert_fp32_parity(stepwise_logits(models[name], ids, prefill=5), hf_logits(hf_model(name), ids)[4:])


@pytest.mark.parametrize("name", NAMES)
def test_ragged_batch_generates_what_each_prompt_generates_alone(name, models):
    model = models[name]
    short, long = prompt(3, 7), prompt(4, 19)
    alone = [model.generate(p, max_new_tokens=12).token_ids for p in (short, long)]
    batch = model.generate([short, long], max_new_tokens=12)
    assert [r.token_ids for r in batch] == alone
    assert all(len(t) > 0 for t in alone)


def test_sliding_layers_keep_a_window_sized_ring(artifacts, models):
    manifest = models["gemma3"].manifest
    sliding = [0, 1, 3, 4]  # tiny.py's layer_types
    rings = {b.written_by[0]: b.length for b in manifest.kv_cache.buffers if b.layout == "ring"}
    assert rings == {i: 6 for i in sliding}
    shapes = {name: v.shape[2] for name, v in manifest.inputs.items() if name.startswith("past_key.")}
    assert shapes == {f"past_key.{i}": 6 if i in sliding else manifest.kv_cache.max_seq_len for i in range(6)}
    assert "8 x ring of 6 slots fp32 ['batch', 1, 6, 32]: key.0, value.0, key.1, value.1 ..." in describe(artifacts["gemma3"])
    backend = models["gemma3"].backend
    backend.prefill([prompt(7, 3)])
    assert [v.shape()[2] for v in backend.cache] == [shapes[f"past_key.{i}"] for i in range(6) for _ in "kv"]


def test_cache_buffers_are_bound_once_and_updated_in_place(models):
    backend = models["gemma3"].backend
    backend.prefill([prompt(5, 9), prompt(6, 3)])
    pointers = [value.data_ptr() for value in backend.cache]
    for token in (7, 8, 9):
        backend.decode(np.asarray([token, token]))
        assert [value.data_ptr() for value in backend.cache] == pointers
        presents = backend.binding.get_outputs()[:len(pointers)]
        assert [value.data_ptr() for value in presents] == pointers
    np.testing.assert_array_equal(backend.lengths, [12, 6])
