"""TensorRT engines of `tensorrt`-target artifacts (built by `gemma-export build-engine`, listed in
manifest.engines), run with `tensorrt` or `tensorrt_rtx`, whichever built the engine.

The graph interface is the in-place one of runtime/backends/ort_inplace.py, and so are prefill,
decode and teacher_forced (inherited); this class only moves the tensors: one device buffer per
cache tensor, bound once as both past_{name} and present_{name} (TensorRT updates the cache in
place), fixed-size device buffers for the int64 inputs, a logits buffer that grows on demand.
The engine has two optimization profiles: 0 for prefill (any width), 1 for decode (width 1); each
has its own execution context, both bound to the same cache.

Nothing here touches a TensorRT runtime before a CUDA device has been found: without one they
fail (tensorrt) or crash the process (tensorrt_rtx) on engine load.
"""

from __future__ import annotations

import importlib
import importlib.util
import weakref
from pathlib import Path
from types import ModuleType

import numpy as np

from gemma_runtime.backends import cuda_driver
from gemma_runtime.backends.ort_inplace import OrtInplaceBackend
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import Manifest

LIBRARIES = ("tensorrt", "tensorrt_rtx")
PREFILL_PROFILE, DECODE_PROFILE = 0, 1
FEEDS = ("input_ids", "position_ids", "past_lengths", "seq_lengths", "logits_index")
RUNTIME_CACHE_SUFFIX = ".runtime-cache"  # tensorrt_rtx: kernels compiled on this GPU at first load


def installed(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def import_library(library: str) -> ModuleType:
    if not installed(library):
        raise RuntimeInputError(f"{library} is not installed (pip install 'gemma-export[tensorrt]' for "
                                "tensorrt_rtx; the full tensorrt wheels come with NVIDIA's TensorRT)")
    return importlib.import_module(library)


def error_log(trt: ModuleType):
    """A TensorRT logger that keeps the errors (for the exception's message) and prints nothing."""

    class ErrorLog(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)

    return ErrorLog()


class TrtBackend(OrtInplaceBackend):
    def __init__(self, folder: Path, manifest: Manifest, threads: int | None):
        entry, trt = _engine_entry(folder, manifest)
        cuda_driver.use_primary_context()
        self.log = error_log(trt)
        self.runtime = trt.Runtime(self.log)  # kept: the engine must not outlive it
        self.engine = self.runtime.deserialize_cuda_engine((folder / entry["file"]).read_bytes())
        if self.engine is None:
            raise RuntimeInputError(f"{folder / entry['file']}: {entry['library']} cannot load it "
                                    f"({'; '.join(self.log.errors) or 'no reason given'})")
        config = self.engine.create_runtime_config() if entry["library"] == "tensorrt_rtx" else None
        if config is not None:
            path = folder / (entry["file"] + RUNTIME_CACHE_SUFFIX)
            weakref.finalize(self, _write_runtime_cache, _runtime_cache(config, path), path)
        self.contexts = [self.engine.create_execution_context(*([config] if config else [])) for _ in range(2)]
        self.stream = cuda_driver.Stream()
        for index, context in enumerate(self.contexts):
            context.set_optimization_profile_async(index, self.stream.handle)

        self.max_seq_len = manifest.kv_cache.max_seq_len
        self.max_batch = int(entry["max_batch"])
        self.pad_id = manifest.tokens.pad
        self.vocab = manifest.config["vocab_size"]
        self.buffers = manifest.kv_cache.buffers
        self.cache_names = [b.name for b in self.buffers]
        self.cache_itemsize = [np.dtype(trt.nptype(self.engine.get_tensor_dtype(b.input_name))).itemsize
                               for b in self.buffers]
        self.logits_dtype = trt.nptype(self.engine.get_tensor_dtype("logits"))
        self.cache: list[cuda_driver.Buffer] = []
        self.cache_batch = 0
        self.lengths = np.zeros(0, np.int64)
        self.feeds = {name: cuda_driver.Buffer(self.max_batch * self.max_seq_len * 8) for name in FEEDS}
        self.logits = cuda_driver.Buffer(0)
        for context in self.contexts:
            for name, buffer in self.feeds.items():
                context.set_tensor_address(name, buffer.ptr)

    def _allocate(self, batch: int) -> None:
        """Zeroed cache buffers for this batch size, each bound as both past and present."""
        if batch > self.max_batch:
            raise RuntimeInputError(f"batch {batch} is larger than this engine's maximum ({self.max_batch}); "
                                    "rebuild it with gemma-export build-engine --max-batch")
        if self.cache_batch == batch:
            return
        self.cache = [cuda_driver.Buffer(batch * int(np.prod(b.shape[1:])) * itemsize)
                      for b, itemsize in zip(self.buffers, self.cache_itemsize)]
        self.cache_batch = batch
        for context in self.contexts:
            for b, buffer in zip(self.buffers, self.cache):
                context.set_input_shape(b.input_name, (batch, *b.shape[1:]))
                context.set_tensor_address(b.input_name, buffer.ptr)
                context.set_tensor_address(b.output_name, buffer.ptr)

    def _decode_step(self, ids: np.ndarray) -> np.ndarray:
        batch = len(ids)
        return self._run(ids, self.lengths, np.ones(batch, np.int64), np.zeros((batch, 1), np.int64))[:, 0]

    def _run(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray) -> np.ndarray:
        batch, width = ids.shape
        if int((past + width).max()) > self.max_seq_len:
            raise RuntimeInputError(f"the sequence would exceed this artifact's maximum length {self.max_seq_len}")
        context = self.contexts[DECODE_PROFILE if width == 1 and keep.shape[1] == 1 else PREFILL_PROFILE]
        feeds = {"input_ids": ids, "position_ids": past[:, None] + np.arange(width, dtype=np.int64),
                 "past_lengths": past, "seq_lengths": seq, "logits_index": keep}
        for name, array in feeds.items():
            array = np.ascontiguousarray(array, np.int64)
            self.feeds[name].upload(array)
            context.set_input_shape(name, array.shape)
        out = np.empty((batch, keep.shape[1], self.vocab), self.logits_dtype)
        if out.nbytes > self.logits.nbytes:
            self.logits = cuda_driver.Buffer(out.nbytes)
        for c in self.contexts:
            c.set_tensor_address("logits", self.logits.ptr)
        if not context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"TensorRT could not run the engine ({'; '.join(self.log.errors) or 'no reason given'})")
        self.stream.synchronize()
        self.lengths = past + seq
        return self.logits.download(out).astype(np.float32, copy=False)


def _engine_entry(folder: Path, manifest: Manifest) -> tuple[dict, ModuleType]:
    """The manifest's engine for this machine's GPU, and the library that runs it; every check that
    can fail is made before a TensorRT runtime is touched."""
    engines = manifest.engines
    if not engines:
        raise RuntimeInputError(f"{folder}: no TensorRT engine (export with --target tensorrt, then run "
                                "gemma-export build-engine)")
    if cuda_driver.device_count() == 0:
        raise RuntimeInputError("the trt backend needs an NVIDIA GPU with its driver; none was found")
    capability = cuda_driver.compute_capability()
    listed = ", ".join(f"{e['file']} ({e['library']}, compute capability {e['compute_capability']})" for e in engines)
    usable = [e for e in engines if e["compute_capability"] == capability and e["library"] in LIBRARIES]
    if not usable:
        raise RuntimeInputError(f"{folder}: no engine for this GPU (compute capability {capability}); "
                                f"it has {listed}")
    for entry in usable:
        if installed(entry["library"]):
            trt = import_library(entry["library"])
            if trt.__version__ != entry["version"]:
                raise RuntimeInputError(f"{folder / entry['file']} was built with {entry['library']} "
                                        f"{entry['version']}, this is {trt.__version__}: rebuild it")
            return entry, trt
    raise RuntimeInputError(f"{folder}: {' or '.join(sorted({e['library'] for e in usable}))} is needed to run "
                            f"{listed} and is not installed")


def _runtime_cache(config, path: Path):
    """tensorrt_rtx compiles kernels for the GPU when an engine first runs; they are kept in a file
    beside the engine, read here and written back when the backend goes away."""
    cache = config.create_runtime_cache()
    if path.is_file():
        cache.deserialize(path.read_bytes())  # refused (False) when made on another GPU or version
    config.set_runtime_cache(cache)
    return cache


def _write_runtime_cache(cache, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(bytes(cache.serialize()))
        tmp.replace(path)
    except OSError:
        pass  # a read-only artifact: the kernels are compiled again next time
