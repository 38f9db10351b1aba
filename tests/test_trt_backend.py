"""The trt backend's plumbing (engine choice, buffers bound once, profiles, the runtime cache) on a
machine without a GPU: CUDA and TensorRT are replaced by host-memory fakes whose execution
context runs the artifact's graph with onnxruntime on the bound buffers, as TensorRT would run
the engine. What only a GPU shows (the engine's own numbers) is in test_target_tensorrt.py."""

import gc
import hashlib
import itertools
import json
import types

import numpy as np
import onnxruntime as ort
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.backends import cuda_driver, trt
from gemma_runtime.backends.protocol import Capabilities
from gemma_runtime.engine import Engine
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import PAST_LENGTHS
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import hf_model

ENGINE_BYTES = b"an engine"
ENGINE = {"file": "model.tensorrt_rtx.sm89.engine", "library": "tensorrt_rtx", "version": "1.7.1.116",
          "compute_capability": "8.9", "max_batch": 2, "opt_seq_len": 16,
          "sha256": hashlib.sha256(ENGINE_BYTES).hexdigest()}
MEMORY: dict[int, np.ndarray] = {}  # fake device pointer -> bytes
_pointers = itertools.count(4096, 4096)


class FakeBuffer:
    def __init__(self, nbytes):
        self.nbytes, self.ptr = nbytes, next(_pointers)
        MEMORY[self.ptr] = np.zeros(nbytes, np.uint8)

    def upload(self, array):
        MEMORY[self.ptr][:array.nbytes] = np.ascontiguousarray(array).view(np.uint8).ravel()

    def download(self, out):
        out.view(np.uint8).ravel()[:] = MEMORY[self.ptr][:out.nbytes]
        return out


class FakeContext:
    """Runs the graph with onnxruntime on the bound buffers; present_* must alias past_*."""

    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.profile, self.runs = engine, {}, {}, None, 0

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        session = self.engine.session
        feeds = {}
        for i in session.get_inputs():
            dtype = np.int64 if i.type == "tensor(int64)" else np.float32
            size = int(np.prod(self.shapes[i.name])) * np.dtype(dtype).itemsize
            feeds[i.name] = MEMORY[self.addresses[i.name]][:size].view(dtype).reshape(self.shapes[i.name])
        names = [o.name for o in session.get_outputs()]
        for name, value in zip(names, session.run(names, feeds)):
            if name.startswith("present_"):
                assert self.addresses[name] == self.addresses[name.replace("present_", "past_")]
            MEMORY[self.addresses[name]][:value.nbytes] = value.view(np.uint8).ravel()
        self.runs += 1
        return True


class FakeEngine:
    def __init__(self, folder):
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.contexts = []

    def get_tensor_dtype(self, name):
        return np.float32

    def create_runtime_config(self):
        return types.SimpleNamespace(create_runtime_cache=FakeCache, set_runtime_cache=lambda cache: True)

    def create_execution_context(self, config):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeCache:
    loaded = None

    def deserialize(self, blob):
        FakeCache.loaded = bytes(blob)
        return True

    def serialize(self):
        return b"kernels compiled for this GPU"


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt-backend") / "gemma3"
    export(tiny_checkpoints["gemma3"], folder, ExportOptions(target="tensorrt", max_seq_len=64))
    (folder / ENGINE["file"]).write_bytes(ENGINE_BYTES)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "engines": [ENGINE]}))
    return folder


@pytest.fixture
def fake_gpu(monkeypatch, artifact):
    """An 8.9 GPU, and a TensorRT-RTX of the engine's version that 'deserializes' it."""
    engines = []

    def deserialize(data):
        engines.append(FakeEngine(artifact))
        return engines[-1]

    library = types.SimpleNamespace(__version__=ENGINE["version"], nptype=lambda dtype: dtype,
                                    Runtime=lambda log: types.SimpleNamespace(deserialize_cuda_engine=deserialize))
    monkeypatch.setattr(cuda_driver, "device_count", lambda: 1)
    monkeypatch.setattr(cuda_driver, "compute_capability", lambda device=0: "8.9")
    monkeypatch.setattr(cuda_driver, "use_primary_context", lambda device=0: None)
    monkeypatch.setattr(cuda_driver, "Buffer", FakeBuffer)
    monkeypatch.setattr(cuda_driver, "Stream", lambda: types.SimpleNamespace(handle=0, synchronize=lambda: None))
    monkeypatch.setattr(trt, "installed", lambda name: name == "tensorrt_rtx")
    monkeypatch.setattr(trt, "import_library", lambda name: library)
    monkeypatch.setattr(trt, "error_log", lambda lib: types.SimpleNamespace(errors=[]))
    return engines


def test_prefill_and_decode_through_the_bound_cache_match_transformers(artifact, fake_gpu):
    model = gemma_runtime.load(artifact, backend="trt")
    ids = prompt(2, 30)
    reference = hf_logits(hf_model("gemma3"), ids)
    assert_fp32_parity(model.logits(ids), reference)
    assert_fp32_parity(stepwise_logits(model, ids, prefill=5), reference[4:])
    prefill, decode = fake_gpu[0].contexts
    assert (prefill.profile, decode.profile) == (trt.PREFILL_PROFILE, trt.DECODE_PROFILE)
    assert prefill.runs == 2 and decode.runs == len(ids) - 5  # teacher-forced + prefill; each new token


def test_cache_is_allocated_once_per_batch_size_and_bound_in_both_profiles(artifact, fake_gpu):
    backend = gemma_runtime.load(artifact, backend="trt").backend
    backend.reserve(2)
    ids = np.zeros((2, 9), np.int64)
    ids[0], ids[1, :3] = prompt(5, 9), prompt(6, 3)
    backend.step(ids, [0, 0], [9, 3])
    pointers = [buffer.ptr for buffer in backend.cache]
    past = np.asarray([9, 3])
    for token in (7, 8, 9):
        backend.step([[token], [token]], past, [1, 1])
        past += 1
    backend.reserve(2)  # the same rows: kept
    assert [buffer.ptr for buffer in backend.cache] == pointers
    for context in fake_gpu[0].contexts:
        assert [context.addresses[f"present_{name}"] for name in backend.cache_names] == pointers
    np.testing.assert_array_equal(MEMORY[backend.feeds[PAST_LENGTHS].ptr][:16].view(np.int64), [11, 5])
    with pytest.raises(RuntimeInputError, match="batch 3 is larger than this engine's maximum"):
        backend.reserve(3)


def test_the_engine_runs_on_the_trt_backend(artifact, fake_gpu):
    """Continuous batching over TensorRT: every call runs the reserved rows (no row views)."""
    model = gemma_runtime.load(artifact, backend="trt")
    assert type(model.backend).__mro__[1:] == (object,)  # a sibling of the onnxruntime backends
    assert model.backend.capabilities == Capabilities(keeps_rows=True, row_views=False, devices=("cuda",),
                                                      max_batch=ENGINE["max_batch"])
    short, long = prompt(3, 7), prompt(4, 19)
    alone = [model.generate(p, max_new_tokens=6).token_ids for p in (short, long)]
    engine = Engine(gemma_runtime.load(artifact, backend="trt"), max_batch=2, prefill_chunk=8)
    requests = [engine.submit(engine.request(p, max_new_tokens=6)) for p in (short, long)]
    while engine.step():
        continue
    assert [r.tokens for r in requests] == alone and all(r.finish_reason == "length" for r in requests)
    with pytest.raises(RuntimeInputError, match="batch 3 is larger than this engine's maximum"):
        Engine(gemma_runtime.load(artifact, backend="trt"), max_batch=3)


def test_ragged_batch_generates_what_each_prompt_generates_alone(artifact, fake_gpu):
    model = gemma_runtime.load(artifact, backend="trt")
    short, long = prompt(3, 7), prompt(4, 19)
    alone = [model.generate(p, max_new_tokens=8).token_ids for p in (short, long)]
    assert [r.token_ids for r in model.generate([short, long], max_new_tokens=8)] == alone


def test_runtime_cache_is_read_at_load_and_written_back(artifact, fake_gpu):
    cache = artifact / (ENGINE["file"] + trt.RUNTIME_CACHE_SUFFIX)
    cache.write_bytes(b"from last time")
    model = gemma_runtime.load(artifact, backend="trt")
    assert FakeCache.loaded == b"from last time"
    del model
    gc.collect()
    assert cache.read_bytes() == b"kernels compiled for this GPU"


def test_refuses_an_engine_for_another_gpu_or_library_version(artifact, fake_gpu, monkeypatch):
    monkeypatch.setattr(cuda_driver, "compute_capability", lambda device=0: "12.0")
    with pytest.raises(RuntimeInputError, match=r"no engine for this GPU \(compute capability 12.0\)"):
        gemma_runtime.load(artifact, backend="trt")
    monkeypatch.setattr(cuda_driver, "compute_capability", lambda device=0: "8.9")
    monkeypatch.setattr(trt, "import_library", lambda name: types.SimpleNamespace(__version__="1.8.0"))
    with pytest.raises(RuntimeInputError, match="was built with tensorrt_rtx 1.7.1.116, this is 1.8.0: rebuild"):
        gemma_runtime.load(artifact, backend="trt")
    assert not fake_gpu  # no engine was deserialized


def test_runs_the_decoders_engine_where_encoders_have_theirs(artifact, fake_gpu):
    import dataclasses

    from gemma_runtime.manifest import read_manifest

    encoder = {**ENGINE, "file": "image_encoder.tensorrt_rtx.sm89.engine", "graph": "image_encoder"}
    manifest = read_manifest(artifact)
    entry, _ = trt._engine_entry(artifact, dataclasses.replace(manifest, engines=(encoder, ENGINE)))
    assert entry == ENGINE


def test_deserializes_only_an_engine_whose_sha256_the_manifest_records(artifact, fake_gpu, tmp_path):
    import dataclasses
    import shutil

    from gemma_runtime.manifest import read_manifest

    folder = tmp_path / "crafted"
    shutil.copytree(artifact, folder)
    (folder / ENGINE["file"]).write_bytes(b"an engine, with something added")
    with pytest.raises(RuntimeInputError, match="do not match the sha256 the manifest records; refusing"):
        gemma_runtime.load(folder, backend="trt")
    unhashed = {k: v for k, v in ENGINE.items() if k != "sha256"}
    manifest = dataclasses.replace(read_manifest(folder), engines=(unhashed,))
    with pytest.raises(RuntimeInputError, match="records no sha256"):
        trt.TrtBackend(folder, manifest, threads=None)
    assert not fake_gpu  # nothing was deserialized
