"""The openvino target: a graph of standard ops only (the generic graph, its functions inlined),
run by OpenVINO (its default backend; parity for every family in tests/test_conformance.py), by
onnxruntime (backend="ort") and by onnx's reference evaluator, each against transformers; its
--quant weights (DequantizeLinear) on OpenVINO; and the generic target's --inline-functions,
which OpenVINO runs where it refuses the plain graph."""

from __future__ import annotations

from types import SimpleNamespace

import onnx
import onnx.reference
import pytest

import gemma_runtime
from gemma_export import ort_run
from gemma_export.errors import GemmaExportError
from gemma_export.export import export, resolve_options
from gemma_export.targets import ExportOptions
from gemma_runtime.backends.concat_cache import ConcatCacheBackend
from gemma_runtime.backends.openvino import OpenVinoBackend
from gemma_runtime.backends.ort_concat import OrtConcatBackend
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import read_manifest
from gemma_runtime.server import Service
from cli_util import cli
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from test_chat_tokens import with_tokenizer
from tiny import FAMILY_CONFIGS, hf_model

NAMES = tuple(FAMILY_CONFIGS)


class ReferenceSession:
    """onnx's reference evaluator behind the GraphSession the growing-cache backend drives."""

    def __init__(self, path):
        self.evaluator = onnx.reference.ReferenceEvaluator(onnx.load(path))

    def run(self, output_names, feeds):
        return self.evaluator.run(output_names, feeds)


@pytest.fixture(scope="module")
def artifacts(target_artifacts):
    return target_artifacts("openvino")


@pytest.mark.parametrize("name", NAMES)
def test_the_graph_holds_standard_ops_only(name, artifacts):
    manifest = read_manifest(artifacts[name])
    model = onnx.load(artifacts[name] / manifest.decoder.file, load_external_data=False)
    assert not model.functions
    assert {n.domain for n in model.graph.node} == {""} and [o.domain for o in model.opset_import] == [""]
    assert [p["name"] for p in manifest.passes][-1] == "inline_functions"


@pytest.mark.parametrize("name", NAMES)
def test_openvino_and_onnxruntime_run_the_graph_with_parity(name, artifacts):
    """Whole prompt and token by token, on the default backend (OpenVINO) and on onnxruntime. (Here
    and not in the conformance suite: that runs before test_fuzz, whose in-process address-space caps
    the threads OpenVINO leaves in the process do not survive.)"""
    openvino = gemma_runtime.load(artifacts[name], threads=1)
    onnxruntime = gemma_runtime.load(artifacts[name], backend="ort", threads=1)
    assert isinstance(openvino.backend, OpenVinoBackend) and isinstance(onnxruntime.backend, OrtConcatBackend)
    ids = prompt(2, 30)
    expected = hf_logits(hf_model(name), ids)
    for model in (openvino, onnxruntime):
        assert_fp32_parity(model.logits(ids), expected)
        assert_fp32_parity(stepwise_logits(model, ids, prefill=5), expected[4:])
    short, long = prompt(3, 7), prompt(4, 19)
    alone = [openvino.generate(p, max_new_tokens=8).token_ids for p in (short, long)]
    assert [r.token_ids for r in openvino.generate([short, long], max_new_tokens=8)] == alone


@pytest.mark.parametrize("name", ["gemma2", "gemma4-shared"])
def test_onnx_reference_evaluator_runs_the_graph_with_parity(name, artifacts):
    folder = artifacts[name]
    manifest = read_manifest(folder)
    backend = ConcatCacheBackend(ReferenceSession(folder / manifest.decoder.file), manifest, "cpu")
    ids = prompt(2, 16)
    expected = hf_logits(hf_model(name), ids)
    assert_fp32_parity(stepwise_logits(SimpleNamespace(backend=backend), ids, prefill=12), expected[11:])


def test_stream_joins_to_generate_and_the_server_runs_one_request_at_a_time(tiny_checkpoints, tmp_path):
    folder = with_tokenizer(tiny_checkpoints["gemma3"], tmp_path / "ckpt")
    export(folder, tmp_path / "out", ExportOptions(target="openvino", max_seq_len=64))
    model = gemma_runtime.load(tmp_path / "out", threads=1)
    expected = model.generate("hello world", max_new_tokens=8).text
    assert "".join(model.stream("hello world", max_new_tokens=8)) == expected
    service = Service(tmp_path / "out", threads=1)  # what serve runs: one slot, the growing cache holds one sequence
    try:
        assert service.engine.max_batch == 1
        requests = [service.engine.submit(service.engine.request(p, 8)) for p in ("hello world", "abc", "hello world")]
        assert [r.result(timeout=60).text for r in requests][::2] == [expected, expected]
    finally:
        service.close()


class UnfusedOrtSession:
    """onnxruntime running the graph as written: DequantizeLinear then a float MatMul (its CPU
    provider would fuse them into a MatMulNBits that rounds activations to int8)."""

    def __init__(self, path):
        self.session = ort_run.session(onnx.load(path), optimize=False)

    def run(self, output_names, feeds):
        return self.session.run(output_names, feeds)


def test_int4_weights_run_on_openvino_as_dequantized(tiny_checkpoints, tmp_path):
    export(tiny_checkpoints["gemma3"], tmp_path / "int4", ExportOptions(target="openvino", quant="int4-uniform",
                                                                        max_seq_len=64))
    manifest = read_manifest(tmp_path / "int4")
    graph = onnx.load(tmp_path / "int4" / manifest.decoder.file, load_external_data=False).graph
    assert {n.op_type for n in graph.node if n.op_type == "DequantizeLinear"} and {n.domain for n in graph.node} == {""}
    ids = prompt(2, 20)
    openvino = stepwise_logits(gemma_runtime.load(tmp_path / "int4", threads=1), ids, prefill=8)
    exact = ConcatCacheBackend(UnfusedOrtSession(tmp_path / "int4" / manifest.decoder.file), manifest, "cpu")
    assert_fp32_parity(openvino, stepwise_logits(SimpleNamespace(backend=exact), ids, prefill=8))


def test_generic_with_inline_functions_runs_on_openvino(tiny_checkpoints, tmp_path, capsys):
    plain, inlined = tmp_path / "plain", tmp_path / "inlined"
    export(tiny_checkpoints["gemma-mha"], plain, ExportOptions(target="generic", max_seq_len=64))
    code, _, err = cli(capsys, "export", tiny_checkpoints["gemma-mha"], "-o", inlined, "--target", "generic",
                       "--inline-functions", "--max-seq-len", "64")
    assert code == 0, err
    with pytest.raises(RuntimeInputError, match="OpenVINO cannot load it .*No conversion rule found for operations: gemma_export.GemmaAttention"):
        OpenVinoBackend(plain, read_manifest(plain), threads=1)
    backend = OpenVinoBackend(inlined, read_manifest(inlined), threads=1)
    ids = prompt(1, 20)
    assert_fp32_parity(stepwise_logits(SimpleNamespace(backend=backend), ids, prefill=8),
                       hf_logits(hf_model("gemma-mha"), ids)[7:])


def test_inline_functions_applies_to_targets_that_keep_functions():
    assert resolve_options(ExportOptions(target="generic", inline_functions=True)).inline_functions
    with pytest.raises(GemmaExportError, match="--inline-functions applies to .* not 'ort-cpu'"):
        resolve_options(ExportOptions(target="ort-cpu", inline_functions=True))
