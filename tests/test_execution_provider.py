"""Where an artifact runs: the device comes from the manifest (its target's devices) or from
load(device=...), and picks onnxruntime's execution provider; CUDA without onnxruntime-gpu or a
GPU is a clear error. CUDA execution itself is not verified here (no GPU, no onnxruntime-gpu)."""

import tomllib
import types

import pytest

import gemma_runtime
from gemma_export.errors import GemmaExportError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.backends import ort_session
from gemma_runtime.errors import RuntimeInputError
from conftest import REPO
from parity import prompt


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("devices")
    export(tiny_checkpoints["gemma3"], root / "cuda", ExportOptions(target="ort-cuda", max_seq_len=32))
    export(tiny_checkpoints["gemma3"], root / "cpu", ExportOptions(target="ort-cpu", max_seq_len=32))
    return root


def test_ort_cuda_defaults_to_fp16_and_lists_its_devices(artifacts):
    manifest = gemma_runtime.load(artifacts / "cuda", device="cpu").manifest
    assert manifest.dtype == "fp16" and manifest.execution.devices == ("cuda", "cpu")
    assert gemma_runtime.load(artifacts / "cpu").manifest.execution.devices == ("cpu",)


def test_fp32_ort_cuda_is_refused_with_the_reason(tiny_checkpoints, tmp_path):
    with pytest.raises(GemmaExportError, match="target 'ort-cuda' exports fp16 or bf16, not fp32"):
        export(tiny_checkpoints["gemma3"], tmp_path / "out", ExportOptions(target="ort-cuda", dtype="fp32"))
    assert not (tmp_path / "out").exists()


def test_cuda_without_onnxruntime_gpu_is_a_clear_error(artifacts):
    with pytest.raises(RuntimeInputError, match="CUDAExecutionProvider.*gemma-export\\[gpu\\]"):
        gemma_runtime.load(artifacts / "cuda")  # its default device: cuda


def test_device_cpu_runs_an_ort_cuda_graph_on_the_cpu_provider(artifacts):
    model = gemma_runtime.load(artifacts / "cuda", device="cpu", threads=1)
    assert model.backend.session.get_providers() == ["CPUExecutionProvider"]
    assert len(model.generate(prompt(1, 9), max_new_tokens=4).token_ids) == 4


def test_a_device_the_target_does_not_run_on_is_refused(artifacts):
    with pytest.raises(RuntimeInputError, match="target ort-cpu runs on cpu, not cuda"):
        gemma_runtime.load(artifacts / "cpu", device="cuda")
    with pytest.raises(RuntimeInputError, match="unknown backend 'tpu'"):
        gemma_runtime.load(artifacts / "cpu", backend="tpu")


def _fake_onnxruntime(monkeypatch, available: list[str], falls_back: bool = False) -> list:
    """onnxruntime with a stubbed provider list; its sessions record the providers asked for and
    start them, or fall back to the CPU as onnxruntime-gpu does without CUDA libraries."""
    asked = []

    class Session:
        def __init__(self, path, options, providers):
            asked.append(providers)
            self.providers = ["CPUExecutionProvider"] if falls_back else providers

        def get_providers(self):
            return self.providers

    monkeypatch.setattr(ort_session, "ort", types.SimpleNamespace(
        __version__=ort_session.ort.__version__, SessionOptions=ort_session.ort.SessionOptions,
        InferenceSession=Session, get_available_providers=lambda: available))
    return asked


def test_cuda_device_asks_for_the_cuda_provider(monkeypatch, tmp_path):
    asked = _fake_onnxruntime(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ort_session.create_session(tmp_path / "model.onnx", threads=1, device="cuda")
    ort_session.create_session(tmp_path / "model.onnx", threads=1, device="cpu")
    assert asked == [["CUDAExecutionProvider"], ["CPUExecutionProvider"]]


def test_onnxruntime_gpu_falling_back_to_the_cpu_is_an_error(monkeypatch, tmp_path):
    _fake_onnxruntime(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"], falls_back=True)
    with pytest.raises(RuntimeInputError, match="could not start CUDAExecutionProvider"):
        ort_session.create_session(tmp_path / "model.onnx", threads=1, device="cuda")


def test_onnxruntime_and_onnxruntime_gpu_are_never_installed_together():
    """Both packages own the module `onnxruntime`: the core dependencies name neither, and each
    extra names one."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def runtimes(requirements):
        return {r.split("[")[0].split(">")[0].split("=")[0].strip() for r in requirements} & {"onnxruntime", "onnxruntime-gpu"}

    extras = project["optional-dependencies"]
    assert runtimes(project["dependencies"]) == set()
    assert runtimes(extras["cpu"]) == {"onnxruntime"} and runtimes(extras["gpu"]) == {"onnxruntime-gpu"}
    assert all(len(runtimes(reqs)) <= 1 for reqs in extras.values())
