"""Gemma 4 against transformers' Gemma4ForCausalLM, fp32, on every target (tensorrt's graph run
by onnxruntime): KV sharing of both layer types with per-layer inputs and the double-wide MLP; K = V
with fewer global KV heads; experts beside the MLP. Whole prompt (longer than the window) and
token by token through each target's cache; greedy tokens equal transformers' generate."""

import numpy as np
import pytest
import torch

import gemma_runtime
from gemma_export.export import export
from gemma_export.describe import describe
from gemma_export.targets import ExportOptions
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import GEMMA4_CONFIGS, hf_model, write_checkpoint

NAMES = list(GEMMA4_CONFIGS)
TARGETS = ["generic", "onnx", "ort-cpu", "tensorrt"]
MAX_SEQ_LEN = 64


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma4")
    return {name: write_checkpoint(name, root / name) for name in NAMES}


@pytest.fixture(scope="module")
def artifacts(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma4_artifacts")
    out = {}
    for name in NAMES:
        for target in TARGETS:
            out[name, target] = root / f"{name}-{target}"
            export(checkpoints[name], out[name, target], ExportOptions(target=target, max_seq_len=MAX_SEQ_LEN))
    return out


@pytest.fixture(scope="module")
def models(artifacts):
    return {key: gemma_runtime.load(folder, threads=1) for key, folder in artifacts.items()}


@pytest.fixture(scope="module")
def references():
    return {name: hf_model(name) for name in NAMES}


CASES = [(name, target) for name in NAMES for target in TARGETS]


@pytest.mark.parametrize("name,target", CASES)
def test_whole_prompt_matches_transformers(name, target, models, references):
    ids = prompt(1, 40)  # longer than the window (6)
    assert_fp32_parity(models[name, target].logits(ids), hf_logits(references[name], ids))


@pytest.mark.parametrize("name,target", CASES)
def test_token_by_token_matches_transformers(name, target, models, references):
    ids = prompt(2, 30)
    assert_fp32_parity(stepwise_logits(models[name, target], ids, prefill=5), hf_logits(references[name], ids)[4:])


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_equal_transformers_generate(name, models, references):
    ids = prompt(3, 9)
    with torch.no_grad():
        expected = references[name].generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                                              eos_token_id=None)[0, len(ids):].tolist()
    for target in TARGETS:
        assert models[name, target].generate(ids, max_new_tokens=10).token_ids == expected, target


def test_shared_caches_are_listed_once_with_their_readers(models):
    buffers = {b.name: b for b in models["gemma4-shared", "onnx"].manifest.kv_cache.buffers}
    # layers 3, 4 (sliding) read layer 1's cache, layer 5 (full) layer 2's; shared layers keep none
    assert sorted(buffers) == ["key.0", "key.1", "key.2", "value.0", "value.1", "value.2"]
    assert buffers["key.1"].read_by == (1, 3, 4) and buffers["value.2"].read_by == (2, 5)
    assert buffers["key.2"].shape[1:] == (2, MAX_SEQ_LEN, 64) and buffers["key.0"].length == 6  # a ring
    backend = models["gemma4-shared", "onnx"].backend
    backend.prefill([prompt(4, 3)])
    assert len(backend.cache) == 6


def test_k_eq_v_layers_have_one_kv_head_and_no_value_projection(checkpoints, models):
    buffers = {b.name: b for b in models["gemma4-k-eq-v", "ort-cpu"].manifest.kv_cache.buffers}
    assert buffers["value.3"].shape[1] == 1 and buffers["value.0"].shape[1] == 2


def test_ort_cpu_keeps_kv_shared_layers_unfused_and_says_why(models, artifacts):
    report = models["gemma4-shared", "ort-cpu"].manifest.report["attention"]
    assert report["GroupQueryAttention"] == 3 and sorted(report["unfused"]) == ["3", "4", "5"]
    assert all("KV-shared" in reason for reason in report["unfused"].values())
    assert "layers left unfused" in describe(artifacts["gemma4-shared", "ort-cpu"])


def test_routed_experts_read_only_the_chosen_experts(models):
    import onnx

    folder = models["gemma4-moe", "onnx"].folder
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert {"TopK", "Gather"} <= ops
    experts = [t.name for t in graph.initializer if t.name.endswith("experts.gate_up_proj")]
    readers = [n for n in graph.node if set(n.input) & set(experts)]
    assert readers and all(n.op_type == "Gather" for n in readers)  # gathered by expert index, never whole


def test_per_layer_table_is_only_gathered(models):
    import onnx

    folder = models["gemma4-shared", "ort-cpu"].folder
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    readers = [n.op_type for n in graph.node if "model.embed_tokens_per_layer.weight" in n.input]
    assert readers == ["Gather"]


@pytest.mark.parametrize("name", NAMES)
def test_tensorrt_rtx_builds_the_tensorrt_graph_ahead_of_time(name, artifacts, tmp_path):
    import shutil

    from gemma_export.emit import tensorrt_engine

    folder = tmp_path / name
    shutil.copytree(artifacts[name, "tensorrt"], folder)
    entry = tensorrt_engine.build(folder, max_batch=1, compute_capability="8.9")  # parses every node, or raises
    assert (folder / entry["file"]).stat().st_size > 0 and entry["library"] == "tensorrt_rtx"
