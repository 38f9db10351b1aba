"""The `tensorrt` target: its graph is taken whole by TensorRT-RTX's ONNX parser and builds an
engine ahead of time (no GPU needed), onnxruntime running the same graph keeps fp32 parity with
transformers, and build-engine writes the engine and its manifest entry atomically. The engine's
own parity and speed need a GPU and a TensorRT that builds for it (the GPU tests at the end)."""

import hashlib
import json
import shutil
import time
from collections import Counter

import numpy as np
import onnx
import pytest
import tensorrt_rtx  # the [tensorrt] extra; CI installs it: these tests fail loudly without it

import gemma_runtime
from cli_util import cli
from gemma_export.bench import OneSequence
from gemma_export.emit import tensorrt_engine
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.backends import cuda_driver, trt
from gemma_runtime.errors import RuntimeInputError
from parity import assert_fp32_parity, prompt, stepwise_logits
from tiny import BASE, CONFIGS

NAMES = list(CONFIGS)
MAX_SEQ_LEN = 64
AHEAD_OF_TIME = "8.9"  # an RTX 4090; any of TensorRT-RTX's list would do


@pytest.fixture(scope="module")
def artifacts(target_artifacts):
    return {name: target_artifacts("tensorrt")[name] for name in NAMES}


@pytest.fixture(scope="module")
def fp16_artifact(tiny_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensorrt-fp16") / "gemma3"
    export(tiny_checkpoints["gemma3"], folder, ExportOptions(target="tensorrt", dtype="fp16", max_seq_len=MAX_SEQ_LEN))
    return folder


@pytest.fixture(scope="module")
def models(artifacts):
    return {name: gemma_runtime.load(folder) for name, folder in artifacts.items()}


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without a GPU, whatever it has."""
    monkeypatch.setattr(cuda_driver, "device_count", lambda: 0)


class Parse:
    """A TensorRT-RTX parser over a new network; holds the builder, which owns the network."""

    def __init__(self):
        self.log = trt.error_log(tensorrt_rtx)
        self.builder = tensorrt_rtx.Builder(self.log)
        self.network = self.builder.create_network(
            1 << int(tensorrt_rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        self.parser = tensorrt_rtx.OnnxParser(self.network, self.log)


def num_layers(name: str) -> int:
    return {**BASE, **CONFIGS[name][1]}["num_hidden_layers"]


def copy_artifact(artifacts, tmp_path, name="gemma-mqa"):
    return shutil.copytree(artifacts[name], tmp_path / name)


@pytest.mark.parametrize("name", NAMES)
def test_standard_ops_only(name, artifacts):
    proto = onnx.load(artifacts[name] / "model.onnx", load_external_data=False)
    assert {n.domain for n in proto.graph.node} == {""}  # no com.microsoft, no gemma_export
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 24)} and not proto.functions
    ops = Counter(n.op_type for n in proto.graph.node)
    layers = num_layers(name)
    assert ops["TensorScatter"] == 2 * layers and ops["RotaryEmbedding"] == 2 * layers and ops["RMSNormalization"]
    assert not any(a.name in ("softcap", "softmax_precision") for n in proto.graph.node for a in n.attribute)
    assert ops["Attention"] == (0 if name == "gemma2" else layers)  # Gemma 2's soft-capped ones spelled out


@pytest.mark.parametrize("name", NAMES)
def test_tensorrt_rtx_takes_every_node_and_builds_ahead_of_time(name, artifacts, tmp_path):
    path = artifacts[name] / "model.onnx"
    nodes = len(onnx.load(path, load_external_data=False).graph.node)
    check = Parse()  # a parser parses one model: one to check support, one to parse
    assert check.parser.supports_model_v2(path.read_bytes(), str(path)), tensorrt_engine.parser_errors(check.parser)
    assert check.parser.num_subgraphs == 1 and check.parser.is_subgraph_supported(0)
    assert len(check.parser.get_subgraph_nodes(0)) == nodes
    parse = Parse()
    assert parse.parser.parse_from_file(str(path)) and parse.parser.num_errors == 0 and not parse.log.errors
    network = parse.network
    layers = Counter(network.get_layer(i).type.name for i in range(network.num_layers))
    cfg_layers = num_layers(name)
    assert layers["KV_CACHE_UPDATE"] == layers["ROTARY_EMBEDDING"] == 2 * cfg_layers  # TensorRT's own layers
    assert layers["ATTENTION_INPUT"] == (0 if name == "gemma2" else cfg_layers)
    assert not any(kind.startswith("PLUGIN") for kind in layers)

    folder = copy_artifact(artifacts, tmp_path, name)
    entry = tensorrt_engine.build(folder, max_batch=2, compute_capability=AHEAD_OF_TIME)
    assert (folder / entry["file"]).stat().st_size > 0
    assert entry["library"] == "tensorrt_rtx" and entry["compute_capability"] == AHEAD_OF_TIME
    assert entry["sha256"] == hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()


def test_an_fp16_graph_builds_too(fp16_artifact, tmp_path):
    proto = onnx.load(fp16_artifact / "model.onnx", load_external_data=False)
    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    assert attention and not any(a.name == "softmax_precision" for n in attention for a in n.attribute)
    folder = shutil.copytree(fp16_artifact, tmp_path / "fp16")
    assert tensorrt_engine.build(folder, compute_capability=AHEAD_OF_TIME)["file"] in {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_graphs_build_too(quant, tiny_checkpoints, tmp_path):
    """Q/DQ weights: int8 per channel, int4 in blocks (signed, no zero points: all TensorRT takes)."""
    folder = tmp_path / quant
    export(tiny_checkpoints["gemma3"], folder, ExportOptions(target="tensorrt", quant=quant, max_seq_len=MAX_SEQ_LEN))
    proto = onnx.load(folder / "model.onnx", load_external_data=False)
    assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    assert tensorrt_engine.build(folder, compute_capability=AHEAD_OF_TIME)["file"] in {p.name for p in folder.iterdir()}


def test_build_engine_cli_writes_the_engine_and_its_manifest_entry(artifacts, tmp_path, capsys):
    folder = copy_artifact(artifacts, tmp_path)
    args = ["build-engine", folder, "--compute-capability", AHEAD_OF_TIME, "--max-batch", 3, "--opt-seq-len", 16]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "building: Building engine" in err and "no timing cache (TensorRT-RTX" in err
    entry = {"file": "model.tensorrt_rtx.sm89.engine", "library": "tensorrt_rtx", "version": tensorrt_rtx.__version__,
             "compute_capability": "8.9", "max_batch": 3, "opt_seq_len": 16}
    (written,) = json.loads((folder / "manifest.json").read_text())["engines"]
    assert written == {**entry, "sha256": hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()}
    first = (folder / entry["file"]).stat()
    assert first.st_size > 0 and str(folder / entry["file"]) in out

    code, _, err = cli(capsys, *args[:-2])  # again, with the default prefill length
    assert code == 0, err
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["engines"] == [{**entry, "opt_seq_len": 128 if MAX_SEQ_LEN > 128 else MAX_SEQ_LEN,
                                    "sha256": hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()}]
    assert (folder / entry["file"]).stat().st_ino != first.st_ino  # replaced by rename, not rewritten
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_interrupted_build_leaves_the_artifact_as_it_was(artifacts, tmp_path):
    folder = copy_artifact(artifacts, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupt(what, done, total):
        if what.startswith("building:") and done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tensorrt_engine.build(folder, compute_capability=AHEAD_OF_TIME, progress=interrupt)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("args, message", [
    ([], "no GPU here: give --compute-capability X.Y"),
    (["--compute-capability", "9.0"], "TensorRT-RTX cannot build for compute capability 9.0 (it builds for 7.5,"),
    (["--compute-capability", "sm89"], "--compute-capability takes X.Y"),
    (["--compute-capability", "8.9", "--max-batch", "0"], "--max-batch must be positive"),
    (["--compute-capability", "8.9", "--opt-seq-len", str(MAX_SEQ_LEN + 1)], "--opt-seq-len must be between 1 and"),
])
def test_build_engine_refuses_bad_options(artifacts, tmp_path, capsys, no_gpu, args, message):
    folder = copy_artifact(artifacts, tmp_path)
    before = sorted(folder.iterdir())
    code, _, err = cli(capsys, "build-engine", folder, *args)
    assert code == 2 and message in err
    assert sorted(folder.iterdir()) == before


def test_build_engine_refuses_other_targets(artifacts, tmp_path, capsys):
    folder = copy_artifact(artifacts, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    onnx_target = {"target": "onnx", "execution": {"backends": ["ort"], "devices": ["cpu"]}}
    (folder / "manifest.json").write_text(json.dumps({**manifest, **onnx_target}))
    code, _, err = cli(capsys, "build-engine", folder, "--compute-capability", AHEAD_OF_TIME)
    assert code == 2 and "target 'onnx'; build-engine needs an artifact exported with --target tensorrt" in err


def test_trt_backend_refuses_without_an_engine_or_a_gpu(artifacts, tmp_path, capsys, no_gpu):
    folder = copy_artifact(artifacts, tmp_path)
    with pytest.raises(RuntimeInputError, match="no TensorRT engine .* gemma-export build-engine"):
        gemma_runtime.load(folder, backend="trt")
    tensorrt_engine.build(folder, compute_capability=AHEAD_OF_TIME)
    with pytest.raises(RuntimeInputError, match="the trt backend needs an NVIDIA GPU"):
        gemma_runtime.load(folder, backend="trt")
    code, _, err = cli(capsys, "generate", folder, "--prompt", "hi", "--backend", "trt")
    assert code == 2 and "needs an NVIDIA GPU" in err


# -- on a GPU ----------------------------------------------------------------------------------

def _gpu_skip_reason() -> str | None:
    if cuda_driver.device_count() == 0:
        return "no CUDA GPU on this machine"
    capability = cuda_driver.compute_capability()
    if trt.installed("tensorrt"):
        return None
    if capability not in tensorrt_engine.rtx_capabilities(tensorrt_rtx):
        return (f"this GPU (compute capability {capability}) has no TensorRT-RTX build target and the full "
                "tensorrt is not installed")
    return None


gpu = pytest.mark.skipif(_gpu_skip_reason() is not None, reason=str(_gpu_skip_reason()))


@pytest.fixture(scope="module")
def engines(artifacts, fp16_artifact, tmp_path_factory):
    """name -> (onnxruntime model, TensorRT model) of the fp32 artifact, plus "gemma3-fp16"."""
    root = tmp_path_factory.mktemp("tensorrt-engines")
    folders = {name: shutil.copytree(artifacts[name], root / name) for name in NAMES}
    folders["gemma3-fp16"] = shutil.copytree(fp16_artifact, root / "gemma3-fp16")
    for folder in folders.values():
        tensorrt_engine.build(folder, max_batch=2)
    return {name: (gemma_runtime.load(f), gemma_runtime.load(f, backend="trt")) for name, f in folders.items()}


@gpu
@pytest.mark.parametrize("name", NAMES)
def test_engine_fp32_matches_onnxruntime(name, engines):
    ort_model, trt_model = engines[name]
    ids = prompt(1, 40)
    assert_fp32_parity(trt_model.logits(ids), ort_model.logits(ids))
    assert_fp32_parity(stepwise_logits(trt_model, ids, prefill=5), stepwise_logits(ort_model, ids, prefill=5))
    short, long = prompt(3, 7), prompt(4, 19)
    assert ([r.token_ids for r in trt_model.generate([short, long], max_new_tokens=12)]
            == [r.token_ids for r in ort_model.generate([short, long], max_new_tokens=12)])


@gpu
def test_engine_fp16_agrees_with_onnxruntime(engines):
    ort_model, trt_model = engines["gemma3-fp16"]
    ids = prompt(1, 40)
    ours, ref = trt_model.logits(ids), ort_model.logits(ids)
    assert np.abs(ours - ref).max() <= 2e-2 * np.abs(ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.99


@gpu
def test_engine_decodes_faster_than_onnxruntime_on_the_cpu(engines):
    def decode_seconds(model, steps=48):
        sequence = OneSequence(model.backend)
        sequence.prefill(prompt(5, 8))
        sequence.decode(3)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            sequence.decode(3)
        return (time.perf_counter() - start) / steps

    ort_model, trt_model = engines["gemma3"]
    per_token = decode_seconds(trt_model)
    print(f"TensorRT decode: {1 / per_token:.0f} tok/s; onnxruntime CPU: {1 / decode_seconds(ort_model):.0f} tok/s")
    assert per_token < 5e-3  # 6 tiny layers: well under 5 ms per token on any GPU
