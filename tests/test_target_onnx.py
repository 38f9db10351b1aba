"""The `onnx` target's graph (standard ops only, opset 24) and its in-place static KV cache (its
parity with transformers is in the conformance suite, tests/test_conformance.py)."""

import re

import numpy as np
import onnx
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.describe import describe
from gemma_export.targets import ExportOptions
from parity import prompt
from tiny import BASE, CONFIGS

NAMES = list(CONFIGS)


@pytest.fixture(scope="module")
def artifacts(target_artifacts):
    return target_artifacts("onnx")


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


def test_manifest_describes_the_in_place_cache(tiny_checkpoints, tmp_path):
    export(tiny_checkpoints["gemma-mqa"], tmp_path / "out", ExportOptions(target="onnx"))  # max_seq_len's default
    manifest = gemma_runtime.load(tmp_path / "out").manifest
    context = BASE["max_position_embeddings"]  # the default 4096 clamped to the model's context
    assert manifest.kv_cache.update == "inplace" and manifest.kv_cache.max_seq_len == context
    inputs = manifest.decoder.inputs
    assert inputs["past_key.0"].shape == ("batch", 1, context, BASE["head_dim"])  # multi-query: one KV head
    assert "attention_mask" not in inputs
    assert {"past_lengths", "seq_lengths", "logits_index"} <= set(inputs)


def test_sliding_layers_keep_a_window_sized_ring(artifacts, models):
    manifest = models["gemma3"].manifest
    sliding = [0, 1, 3, 4]  # tiny.py's layer_types
    rings = {b.written_by[0]: b.length for b in manifest.kv_cache.buffers if b.layout == "ring"}
    assert rings == {i: 6 for i in sliding}
    shapes = {name: v.shape[2] for name, v in manifest.decoder.inputs.items() if name.startswith("past_key.")}
    assert shapes == {f"past_key.{i}": 6 if i in sliding else manifest.kv_cache.max_seq_len for i in range(6)}
    assert "8 x ring of 6 slots fp32 ['batch', 1, 6, 32]: key.0, value.0, key.1, value.1 ..." in describe(artifacts["gemma3"])
    assert re.search(r"graphs:\n  decoder +decoder +model\.onnx \+ model\.onnx\.data\n", describe(artifacts["gemma3"]))
    backend = models["gemma3"].backend
    backend.reserve(1)
    assert [v.shape[2] for v in backend.cache] == [shapes[f"past_key.{i}"] for i in range(6) for _ in "kv"]


def test_cache_buffers_are_bound_once_and_updated_in_place(models):
    backend = models["gemma3"].backend
    backend.reserve(2)
    ids = np.zeros((2, 9), np.int64)
    ids[0], ids[1, :3] = prompt(5, 9), prompt(6, 3)
    backend.step(ids, [0, 0], [9, 3])
    pointers = [value.ctypes.data for value in backend.cache]
    past = np.asarray([9, 3])
    for token in (7, 8, 9):
        before = [value.copy() for value in backend.cache]
        backend.step([[token], [token]], past, [1, 1])
        past += 1
        assert [value.ctypes.data for value in backend.cache] == pointers
        # every present_* was written into its past_* buffer
        assert not any(np.array_equal(old, new) for old, new in zip(before, backend.cache))
