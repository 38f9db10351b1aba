"""build-engine: the ONNX graph of a `tensorrt`-target artifact -> a TensorRT engine beside it,
listed in manifest["engines"].

The library: `tensorrt` where it is installed and sees a GPU, which it builds for; otherwise
`tensorrt_rtx`, which builds ahead of time for a compute capability of its list with no GPU at all
(how CI proves the graph buildable). Both build strongly typed networks: the engine computes in the
artifact's precision. The maximum sequence length is the artifact's static cache length. Two
optimization profiles, in the order runtime/backends/trt.py expects: prefill (width 1..max, tuned
for opt_seq_len; logits for 1..max positions) and decode (width 1); batch 1..max_batch in both.

A TensorRT build keeps its timing cache beside the engine for the next build. TensorRT-RTX has
none (its timing-cache calls are no-ops since 1.2): it compiles kernels on the GPU when the engine
first runs, and the trt backend keeps those in a runtime cache instead.

The engine, then the manifest, are each written to a temporary file and renamed into place: a
failed or interrupted build leaves the artifact as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable

from gemma_export.errors import GemmaExportError
from gemma_runtime.manifest import MANIFEST_FILE, MODEL_FILE, TensorSpec, read_manifest
from gemma_runtime.backends import cuda_driver
from gemma_runtime.backends.trt import DECODE_PROFILE, PREFILL_PROFILE, error_log, import_library, installed

Progress = Callable[[str, int, int], None]  # (what, done, total)
DEFAULT_OPT_SEQ_LEN = 128
SHOWN_DEPTH = 2  # builder phases shown: the outer three levels (the inner ones repeat by the dozen)


def build(folder: Path | str, max_batch: int = 1, opt_seq_len: int | None = None,
          compute_capability: str | None = None, progress: Progress | None = None) -> dict:
    """Builds and writes the engine; returns its manifest entry."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if "trt" not in manifest.execution.backends:
        raise GemmaExportError(f"{folder}: exported for target {manifest.target!r}; build-engine needs an "
                               "artifact exported with --target tensorrt")
    max_seq_len = manifest.kv_cache.max_seq_len
    opt_seq_len = min(DEFAULT_OPT_SEQ_LEN, max_seq_len) if opt_seq_len is None else opt_seq_len
    if max_batch < 1:
        raise GemmaExportError(f"--max-batch must be positive, got {max_batch}")
    if not 1 <= opt_seq_len <= max_seq_len:
        raise GemmaExportError(f"--opt-seq-len must be between 1 and the artifact's maximum sequence length "
                               f"{max_seq_len}, got {opt_seq_len}")
    library, capability = choose_library(compute_capability)
    trt = import_library(library)
    say = progress or (lambda what, done, total: None)

    say(f"parsing {MODEL_FILE} with {library} {trt.__version__}", 0, 1)
    log = error_log(trt)
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)  # holds the weights: kept until the build is done
    if not parser.parse_from_file(str(folder / MODEL_FILE)):
        raise GemmaExportError(f"{folder / MODEL_FILE}: {library} cannot parse it: {'; '.join(parser_errors(parser))}")
    allow_decomposed_attention(trt, network)

    config = builder.create_builder_config()
    for profile in _profiles(builder, network, manifest.decoder.inputs, max_batch, opt_seq_len, max_seq_len):
        config.add_optimization_profile(profile)
    stem = f"model.{library}.sm{capability.replace('.', '')}"
    timing = None
    if library == "tensorrt_rtx":
        config.num_compute_capabilities = 1
        config.set_compute_capability(rtx_capabilities(trt)[capability], 0)
        say("no timing cache (TensorRT-RTX compiles kernels on the GPU at first run)", 1, 1)
    else:
        timing = _timing_cache(config, folder / f"{stem}.timing.cache", say)
    monitor = _monitor(trt, say)
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if monitor.error is not None:
        raise monitor.error
    if serialized is None:
        raise GemmaExportError(f"{library} could not build the engine: {'; '.join(log.errors) or 'no reason given'}")

    entry = {"file": f"{stem}.engine", "library": library, "version": trt.__version__,
             "compute_capability": capability, "max_batch": max_batch, "opt_seq_len": opt_seq_len}
    say(f"writing {entry['file']}", 0, 1)
    manifest = dataclasses.replace(manifest, engines=(*[e for e in manifest.engines if e["file"] != entry["file"]], entry))
    try:
        _replace(folder / entry["file"], serialized)
        if timing is not None:
            _replace(folder / f"{stem}.timing.cache", timing.serialize())
        _replace(folder / MANIFEST_FILE, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    except OSError as e:
        raise GemmaExportError(f"{folder}: cannot write the engine ({e})") from None
    return entry


def choose_library(compute_capability: str | None) -> tuple[str, str]:
    """(library, compute capability "X.Y") for this machine and the user's choice."""
    if compute_capability is not None and not re.fullmatch(r"\d+\.\d", compute_capability):
        raise GemmaExportError(f"--compute-capability takes X.Y (8.9 for an RTX 4090), got {compute_capability!r}")
    gpu = cuda_driver.compute_capability() if cuda_driver.device_count() else None
    if gpu is not None and installed("tensorrt") and compute_capability in (None, gpu):
        return "tensorrt", gpu
    if installed("tensorrt_rtx"):
        capability = compute_capability or gpu
        known = rtx_capabilities(import_library("tensorrt_rtx"))
        if capability is None:
            raise GemmaExportError(f"no GPU here: give --compute-capability X.Y to build ahead of time with "
                                   f"TensorRT-RTX (it builds for {', '.join(known)})")
        if capability not in known:
            raise GemmaExportError(f"TensorRT-RTX cannot build for compute capability {capability} "
                                   f"(it builds for {', '.join(known)})")
        return "tensorrt_rtx", capability
    if gpu is not None and installed("tensorrt"):
        raise GemmaExportError(f"TensorRT builds for the GPU it runs on (compute capability {gpu}); building for "
                               f"{compute_capability} needs TensorRT-RTX (pip install 'gemma-export[tensorrt]')")
    raise GemmaExportError("no TensorRT to build with: pip install 'gemma-export[tensorrt]' (TensorRT-RTX, builds "
                           "without a GPU), or NVIDIA's tensorrt on a machine with a GPU")


def rtx_capabilities(trt) -> dict[str, object]:
    """"X.Y" -> trt.ComputeCapability.SMXY, for every architecture this TensorRT-RTX builds for."""
    return {f"{int(v) // 10}.{int(v) % 10}": v for name, v in trt.ComputeCapability.__members__.items()
            if name.startswith("SM")}


def parser_errors(parser) -> list[str]:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    return [f"node {e.node()} {e.node_name()} ({e.node_operator()}): {e.desc()}" for e in errors]


def allow_decomposed_attention(trt, network) -> None:
    """Let TensorRT build an attention that none of its fused kernels takes (fp32, an odd head size,
    a mask) from several kernels instead of failing; a fused kernel is still used where one fits."""
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.ATTENTION_INPUT:
            layer.__class__ = trt.IAttentionInputLayer
            layer.attention.decomposable = True


def _profiles(builder, network, inputs: dict[str, TensorSpec], max_batch: int, opt_seq_len: int, max_seq_len: int) -> list:
    """(min, opt, max) of each named dimension, per profile."""
    ranges = {PREFILL_PROFILE: {"batch": (1, max_batch, max_batch), "seq": (1, opt_seq_len, max_seq_len),
                                "keep": (1, 1, max_seq_len)},
              DECODE_PROFILE: {"batch": (1, max_batch, max_batch), "seq": (1, 1, 1), "keep": (1, 1, 1)}}
    profiles = []
    for index in sorted(ranges):
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            dims = [(d, d, d) if isinstance(d, int) else ranges[index][d] for d in inputs[name].shape]
            profile.set_shape(name, *([d[k] for d in dims] for k in range(3)))
        profiles.append(profile)
    return profiles


def _timing_cache(config, path: Path, say: Progress):
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if data and config.set_timing_cache(cache, False):
        say(f"reusing the timing cache {path.name}", 1, 1)
        return cache
    cache = config.create_timing_cache(b"")  # none yet, or made by another TensorRT or GPU
    config.set_timing_cache(cache, False)
    say(f"new timing cache, kept as {path.name}", 1, 1)
    return cache


def _monitor(trt, say: Progress):
    class Monitor(trt.IProgressMonitor):
        """Shows the builder's outer phases; an exception from `say` (Ctrl-C) stops the build and
        is raised again once the builder has returned."""

        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.steps: dict[str, int] = {}
            self.error: BaseException | None = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.steps[phase_name] = num_steps
            self._say(phase_name, 0)

        def step_complete(self, phase_name, step):
            self._say(phase_name, step + 1)
            return self.error is None

        def phase_finish(self, phase_name):
            pass

        def _say(self, phase: str, done: int) -> None:
            if self.error is None and self.depth.get(phase, 0) <= SHOWN_DEPTH:
                try:
                    say(f"building: {phase}", done, self.steps.get(phase, 0))
                except BaseException as e:  # noqa: BLE001 - re-raised after the build
                    self.error = e

    return Monitor()


def _replace(path: Path, data) -> None:
    """Writes data (bytes-like) to a temporary file beside path, then renames it over path."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
