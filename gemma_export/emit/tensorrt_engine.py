"""build-engine: the ONNX graph of a `tensorrt`-target artifact -> a TensorRT engine beside it,
listed in manifest["engines"].

The library: `tensorrt` where it is installed and sees a GPU, which it builds for; otherwise
`tensorrt_rtx`, which builds ahead of time for a compute capability of its list with no GPU at all
(how CI proves the graph buildable). Each entry records its engine's sha256, which the trt backend
checks before it deserializes the engine. Both build strongly typed networks: the engine computes in the
artifact's precision. The maximum sequence length is the artifact's static cache length. Two
optimization profiles, in the order runtime/backends/trt.py expects: prefill (width 1..max, tuned
for opt_seq_len; logits for 1..max positions) and decode (width 1); batch 1..max_batch in both.
A multimodal artifact's encoder graphs get an engine each (entries with their `graph` role), one
profile spanning the arrays the runtime's preprocessing makes; the trt backend runs the decoder's
engine only (the encoders run on onnxruntime), so these prove the towers build.

A TensorRT build keeps its timing cache beside the engine for the next build. TensorRT-RTX has
none (its timing-cache calls are no-ops since 1.2): it compiles kernels on the GPU when the engine
first runs, and the trt backend keeps those in a runtime cache instead.

The engines, then the manifest, are each written to a temporary file and renamed into place: a
failed or interrupted build leaves the artifact as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from gemma_export.errors import GemmaExportError
from gemma_runtime.interface import AUDIO_ENCODER, IMAGE_ENCODER
from gemma_runtime.manifest import MANIFEST_FILE, Graph, TensorSpec, read_manifest
from gemma_runtime.media.processors import audio_arrays, clip_lengths, image_arrays
from gemma_runtime.backends import cuda_driver
from gemma_runtime.backends.trt import DECODE_PROFILE, PREFILL_PROFILE, error_log, import_library, installed

Progress = Callable[[str, int, int], None]  # (what, done, total)
DEFAULT_OPT_SEQ_LEN = 128
DEFAULT_MEDIA_ITEMS = 4  # images (or crops) or clips per encoder call
SHOWN_DEPTH = 2  # builder phases shown: the outer three levels (the inner ones repeat by the dozen)


def build(folder: Path | str, max_batch: int = 1, opt_seq_len: int | None = None,
          compute_capability: str | None = None, progress: Progress | None = None,
          max_media_items: int = DEFAULT_MEDIA_ITEMS) -> dict:
    """Builds and writes the decoder's engine, and one per encoder graph of a multimodal artifact
    (items per call up to max_media_items); returns the decoder's manifest entry."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if "trt" not in manifest.execution.backends:
        raise GemmaExportError(f"{folder}: exported for target {manifest.target!r}; build-engine needs an "
                               "artifact exported with --target tensorrt")
    max_seq_len = manifest.kv_cache.max_seq_len
    opt_seq_len = min(DEFAULT_OPT_SEQ_LEN, max_seq_len) if opt_seq_len is None else opt_seq_len
    if max_batch < 1:
        raise GemmaExportError(f"--max-batch must be positive, got {max_batch}")
    if max_media_items < 1:
        raise GemmaExportError(f"--max-media-items must be positive, got {max_media_items}")
    if not 1 <= opt_seq_len <= max_seq_len:
        raise GemmaExportError(f"--opt-seq-len must be between 1 and the artifact's maximum sequence length "
                               f"{max_seq_len}, got {opt_seq_len}")
    library, capability = choose_library(compute_capability)
    trt = import_library(library)
    say = progress or (lambda what, done, total: None)
    suffix = f"{library}.sm{capability.replace('.', '')}"

    decoder = manifest.decoder
    ranges = _decoder_ranges(decoder.inputs, max_batch, opt_seq_len, max_seq_len)
    serialized, timing = _build_graph(trt, library, capability, folder / decoder.file, decoder.inputs, ranges,
                                      folder / f"model.{suffix}.timing.cache", say)
    entry = {"file": f"model.{suffix}.engine", "library": library, "version": trt.__version__,
             "compute_capability": capability, "max_batch": max_batch, "opt_seq_len": opt_seq_len,
             "sha256": _sha256(serialized)}
    built = [(entry, serialized)]
    for graph in manifest.graphs.values():
        if graph.role == decoder.role:
            continue
        ranges = [_encoder_ranges(graph, manifest.multimodal, max_media_items, max_seq_len)]
        serialized, _ = _build_graph(trt, library, capability, folder / graph.file, graph.inputs, ranges, None, say)
        built.append(({"file": f"{graph.role}.{suffix}.engine", "graph": graph.role, "library": library,
                       "version": trt.__version__, "compute_capability": capability,
                       "max_items": max_media_items, "sha256": _sha256(serialized)}, serialized))

    files = {e["file"] for e, _ in built}
    manifest = dataclasses.replace(manifest, engines=(*[e for e in manifest.engines if e["file"] not in files],
                                                      *[e for e, _ in built]))
    try:
        for e, data in built:
            say(f"writing {e['file']}", 0, 1)
            _replace(folder / e["file"], data)
        if timing is not None:
            _replace(folder / f"model.{suffix}.timing.cache", timing.serialize())
        _replace(folder / MANIFEST_FILE, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    except OSError as e:
        raise GemmaExportError(f"{folder}: cannot write the engine ({e})") from None
    return entry


def _build_graph(trt, library: str, capability: str, path: Path, inputs: dict[str, TensorSpec],
                 ranges: list[dict[str, list[tuple[int, int, int]]]], timing_path: Path | None, say: Progress):
    """One ONNX graph built into a serialized engine with one optimization profile per entry of
    ranges (input name -> (min, opt, max) per axis); returns it and the timing cache (TensorRT with
    a timing_path), else None."""
    say(f"parsing {path.name} with {library} {trt.__version__}", 0, 1)
    log = error_log(trt)
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)  # holds the weights: kept until the build is done
    if not parser.parse_from_file(str(path)):
        raise GemmaExportError(f"{path}: {library} cannot parse it: {'; '.join(parser_errors(parser))}")
    allow_decomposed_attention(trt, network)

    config = builder.create_builder_config()
    for shapes in ranges:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            profile.set_shape(name, *([d[k] for d in shapes[name]] for k in range(3)))
        config.add_optimization_profile(profile)
    timing = None
    if library == "tensorrt_rtx":
        config.num_compute_capabilities = 1
        config.set_compute_capability(rtx_capabilities(trt)[capability], 0)
        say("no timing cache (TensorRT-RTX compiles kernels on the GPU at first run)", 1, 1)
    elif timing_path is not None:
        timing = _timing_cache(config, timing_path, say)
    monitor = _monitor(trt, say)
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if monitor.error is not None:
        raise monitor.error
    if serialized is None:
        raise GemmaExportError(f"{library} could not build {path.name}: {'; '.join(log.errors) or 'no reason given'}")
    return serialized, timing


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


Ranges = dict[str, list[tuple[int, int, int]]]  # input name -> (min, opt, max) of each axis


def _decoder_ranges(inputs: dict[str, TensorSpec], max_batch: int, opt_seq_len: int, max_seq_len: int) -> list[Ranges]:
    """The prefill and decode profiles, by the names of the decoder's dimensions (a media decoder's
    `spliced` rows: none up to every position in prefill, at most one in decode)."""
    batch = (1, max_batch, max_batch)
    named = {PREFILL_PROFILE: {"batch": batch, "seq": (1, opt_seq_len, max_seq_len), "keep": (1, 1, max_seq_len),
                               "spliced": (0, 0, max_seq_len)},
             DECODE_PROFILE: {"batch": batch, "seq": (1, 1, 1), "keep": (1, 1, 1), "spliced": (0, 0, 1)}}
    return [{name: [(d, d, d) if isinstance(d, int) else named[index][d] for d in spec.shape]
             for name, spec in inputs.items()} for index in sorted(named)]


def _encoder_ranges(graph: Graph, multimodal: dict, max_items: int, context: int) -> Ranges:
    """One profile spanning the arrays the runtime's preprocessing makes (runtime/media/processors.py)
    for the smallest and the largest item (a clip's soft tokens within a context of that many), 1 to
    max_items items per call; opt: one largest item."""
    modality = {IMAGE_ENCODER: "image", AUDIO_ENCODER: "audio"}[graph.role]
    entry = multimodal[modality]
    if modality == "image":
        small, large = (image_arrays(entry, [np.zeros((h, w, 3), np.uint8)])[0] for h, w in ((32, 32), (768, 1024)))
    else:
        small, large = (audio_arrays(entry, [np.zeros(n, np.float32)])[0] for n in clip_lengths(entry, context))
    return {name: [(1, 1, max_items) if axis == 0 else (small[name].shape[axis], large[name].shape[axis],
                                                        large[name].shape[axis]) for axis in range(large[name].ndim)]
            for name in graph.inputs}


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


def _sha256(serialized) -> str:
    """What the trt backend checks an engine's bytes against before it deserializes them."""
    return hashlib.sha256(memoryview(serialized)).hexdigest()


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
