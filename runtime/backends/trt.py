"""TensorRT engines of `tensorrt`-target artifacts (built by `gemma-export build-engine`, listed in
manifest.engines), run with `tensorrt` or `tensorrt_rtx`, whichever built the engine.

The graph interface is interface.py's in-place one, and the backend implements the step protocol
(backends/protocol.py) beside the onnxruntime backends: one device buffer per cache tensor, bound
once as both past_{name} and present_{name} (TensorRT updates the cache in place), fixed-size device
buffers for the int64 inputs, a logits buffer that grows on demand. A call runs every reserved row
(idle ones padded): no row views. The engine has two optimization profiles: 0 for prefill (any
width), 1 for decode (width 1, one logit row); each has its own execution context, both bound to
the same cache.

Nothing here touches a TensorRT runtime before a CUDA device has been found: without one they
fail (tensorrt) or crash the process (tensorrt_rtx) on engine load.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import weakref
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

from gemma_runtime.backends import cuda_driver
from gemma_runtime.backends.protocol import (Capabilities, MediaInputs, check_copy, check_length, check_reserve,
                                             check_rows, pad_rows, step_arrays)
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import INPLACE_INPUTS, LOGITS, SPLICED_EMBEDS, Splice, inplace_feeds
from gemma_runtime.manifest import Manifest

LIBRARIES = ("tensorrt", "tensorrt_rtx")
PREFILL_PROFILE, DECODE_PROFILE = 0, 1
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


class TrtBackend:
    def __init__(self, folder: Path, manifest: Manifest, threads: int | None):
        if MediaInputs(manifest).declared:
            raise RuntimeInputError(f"{folder}: the trt backend does not feed {SPLICED_EMBEDS} yet; use the ort backend")
        entry, trt = _engine_entry(folder, manifest)
        cuda_driver.use_primary_context()
        self.log = error_log(trt)
        self.runtime = trt.Runtime(self.log)  # kept: the engine must not outlive it
        self.engine = self.runtime.deserialize_cuda_engine(_trusted_engine(folder, entry))
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
        max_batch = int(entry["max_batch"])
        self.capabilities = Capabilities(keeps_rows=True, row_views=False, devices=("cuda",), max_batch=max_batch)
        self.pad_id = manifest.tokens.pad
        self.vocab = manifest.config["vocab_size"]
        self.buffers = manifest.kv_cache.buffers
        self.cache_names = [b.name for b in self.buffers]
        self.cache_itemsize = [np.dtype(trt.nptype(self.engine.get_tensor_dtype(b.input_name))).itemsize
                               for b in self.buffers]
        self.logits_dtype = trt.nptype(self.engine.get_tensor_dtype(LOGITS))
        self.cache: list[cuda_driver.Buffer] = []
        self.reserved = 0
        self.feeds = {name: cuda_driver.Buffer(max_batch * self.max_seq_len * 8) for name in INPLACE_INPUTS}
        self.logits = cuda_driver.Buffer(0)
        for context in self.contexts:
            for name, buffer in self.feeds.items():
                context.set_tensor_address(name, buffer.ptr)

    def reserve(self, rows: int) -> None:
        """Zeroed cache buffers for this many rows, each bound as both past and present."""
        check_reserve(rows, self.capabilities.max_batch, "; rebuild it with gemma-export build-engine --max-batch")
        if self.reserved == rows:
            return
        self.cache = [cuda_driver.Buffer(rows * int(np.prod(b.shape[1:])) * itemsize)
                      for b, itemsize in zip(self.buffers, self.cache_itemsize)]
        self.reserved = rows
        for context in self.contexts:
            for b, buffer in zip(self.buffers, self.cache):
                context.set_input_shape(b.input_name, (rows, *b.shape[1:]))
                context.set_tensor_address(b.input_name, buffer.ptr)
                context.set_tensor_address(b.output_name, buffer.ptr)

    def copy_row(self, source: int, target: int) -> None:
        check_copy(source, target, self.reserved)
        for b, buffer, itemsize in zip(self.buffers, self.cache, self.cache_itemsize):
            row_bytes = int(np.prod(b.shape[1:])) * itemsize
            cuda_driver.copy_device(buffer.ptr + target * row_bytes, buffer.ptr + source * row_bytes, row_bytes)

    def step(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray | None = None,
             first_row: int = 0, spliced: Sequence[Splice | None] | None = None) -> np.ndarray:
        ids, past, seq, keep = step_arrays(ids, past, seq, keep)
        rows, width = ids.shape
        check_rows(first_row, rows, self.reserved)
        if first_row:
            raise RuntimeInputError("the trt backend runs every reserved row (no row views): first_row must be 0")
        if spliced is not None and any(s is not None for s in spliced):
            raise RuntimeInputError(f"this artifact's decoder has no {SPLICED_EMBEDS} input: it cannot splice embeddings")
        check_length(past, width, self.max_seq_len)
        ids, past, seq, keep = pad_rows(self.reserved, ids, past, seq, keep, self.pad_id)
        context = self.contexts[DECODE_PROFILE if width == 1 and keep.shape[1] == 1 else PREFILL_PROFILE]
        for name, array in inplace_feeds(ids, past, seq, keep).items():
            self.feeds[name].upload(array)
            context.set_input_shape(name, array.shape)
        out = np.empty((self.reserved, keep.shape[1], self.vocab), self.logits_dtype)
        if out.nbytes > self.logits.nbytes:
            self.logits = cuda_driver.Buffer(out.nbytes)
        for c in self.contexts:
            c.set_tensor_address(LOGITS, self.logits.ptr)
        if not context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"TensorRT could not run the engine ({'; '.join(self.log.errors) or 'no reason given'})")
        self.stream.synchronize()
        return self.logits.download(out)[:rows].astype(np.float32)

    def rewind(self, row: int, length: int) -> None:
        """Nothing to do: the tensorrt target's caches are full-length (no rings), so the next call
        overwrites what this one wrote beyond length."""


def _engine_entry(folder: Path, manifest: Manifest) -> tuple[dict, ModuleType]:
    """The manifest's engine for this machine's GPU, and the library that runs it; every check that
    can fail is made before a TensorRT runtime is touched."""
    engines = [e for e in manifest.engines if e.get("graph", manifest.decoder.role) == manifest.decoder.role]
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


def _trusted_engine(folder: Path, entry: dict) -> bytes:
    """The engine's bytes, where they hash to the sha256 its manifest entry records: an engine is code
    the GPU runs, and deserializing a crafted one is not safe."""
    path = folder / entry["file"]
    data = path.read_bytes()
    if "sha256" not in entry:
        raise RuntimeInputError(f"{path}: its manifest entry records no sha256 (built before engines were hashed): "
                                "rebuild it with gemma-export build-engine")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RuntimeInputError(f"{path}: its contents do not match the sha256 the manifest records; refusing to "
                                "load it (rebuild it with gemma-export build-engine)")
    return data


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
