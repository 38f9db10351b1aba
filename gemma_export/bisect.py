"""`gemma-export validate OUT --reference SOURCE --bisect`: which group of passes takes an export
away from its reference, in which layer, at which node.

The export of OUT is run again from SOURCE (a checkpoint) with the options OUT's manifest records
(target, dtype, quantization, block size, calibration, cache length; a quantization recipe's
choices are taken from the manifest, so the quantizers act as they did for OUT). After each
runnable group of passes (passes/pipeline.py's runnable_groups: the graph runs after every pass
but between inplace_cache_io and the attention lowering) the graph as it stands runs in onnxruntime
on the CPU over one prompt (the first of validate's, through OUT's tokenizer; seeded random ids
without one), and so does the traced graph before any pass. Each run's logits and the residual
stream after every decoder layer are compared with the fp32 torch reference (graphs/gemma.py,
hidden_states()) on the same ids; OUT itself is compared last, logits only.

Finding the layer outputs: torch.onnx records each traced node's module scope
(`pkg.torch.onnx.name_scopes`, model.layers.N); a layer's output is the one [batch, seq, hidden]
float value its nodes compute and something outside the layer reads. Every traced value, and every
value a group creates, gets value metadata saying what it is (ir_utils.MEANING_PREFIX); the
passes' replace_value moves it to the value that replaces it, so the residual stream is found after
any fusion (SkipSimplifiedLayerNormalization's fourth output takes over the Add's), and two graphs'
values are matched by meaning, not by name. Only these runs carry that metadata: the export itself
never sets it, so artifacts do not change.

Tolerance: max |diff| / max |reference| of each layer's hidden state and of the logits. fp32
groups: validate's FP32_RELATIVE_TOLERANCE (1e-4; clean exports stay below 2e-6). From the first
pass that lowers precision on (precision at fp16/bf16, quantize_matmuls / quantize_embedding under
--quant), the precision's looser entry in LOW_PRECISION_TOLERANCE applies to that group and every
later one; passes that only plan or rescale exactly (quant_recipe, activation_scaling) stay at
fp32's. Against an fp32 reference a quantized graph can only be held to what quantization itself
costs on the worst model seen, so at int4 only a gross fault stands out: the fp32 groups before
it are where a bisect is sharp.

The verdict: the first group whose graph leaves tolerance (or no longer loads or runs); in it, the
first layer whose hidden state does (or "logits" when only they do); in that layer, the node:
the graph before the group and the graph after it run again, each with every value of that
layer's computation (what its output depends on beyond the previous layer's output) that both
graphs compute, and the first of these values, in graph order, that differs beyond tolerance
points at the node computing it; when that node, or the nodes feeding it, are the group's own
(created or rewired by it), the earliest of them that reads only agreeing values is named; every
candidate is listed. When no shared value differs, the node search says so and names the group's
first new node in the layer instead.

A group that changes nothing is not run again (its row repeats the last). A graph onnxruntime has
no CPU kernel for (bf16 compute, ort-cuda's bf16) is "not run here", and the next group that runs
answers for both; any other load or run error is a divergence of that group.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NoKernel

from gemma_export import calibrate
from gemma_export.errors import GemmaExportError
from gemma_export.passes.ir_utils import MEANING_PREFIX
from gemma_export.passes.tied_lm_head import EMBEDDING
from gemma_export.targets import QUANTIZERS, ExportOptions
from gemma_export.tensors import as_streamed
from gemma_export.texts import PROMPTS
from gemma_export.validate import FP32_RELATIVE_TOLERANCE, reference_prefill, token_ids
from gemma_runtime.interface import LOGITS

MEANING = MEANING_PREFIX + "value"  # what a value is: its traced name, or the group that made it
LAYER_OUTPUT = MEANING_PREFIX + "layer_output"  # the decoder layer whose output a value is
SCOPES = "pkg.torch.onnx.name_scopes"
_LAYER_SCOPE = re.compile(r"'model\.layers\.(\d+)'")
# max |diff| / max |reference| once a precision is lowered: about 3x (int4: 2x) the largest a clean
# export showed, on any layer or the logits, over the tiny test models (tests/tiny.py: 4 configs x
# ort-cpu / onnx, uniform widths and recipes) and the real Gemma 3 270M. Largest seen: fp16 5.2e-3,
# bf16 1.6e-2, int8 8.2e-2, int4 0.49 (tiny, random weights; the 270M: fp16 1.0e-3, int8 1.5e-2,
# int4 3.1e-2). A GGUF's own blocks (source) get int4's.
LOW_PRECISION_TOLERANCE = {"fp16": 0.015, "bf16": 0.05, "int8": 0.25, "int4": 1.0, "source": 1.0}
TRACED = ("(traced)",)  # the group label of the traced graph

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class Diff:
    max_abs_diff: float
    relative: float  # max |diff| / max |reference|

    @classmethod
    def of(cls, ours: np.ndarray, ref: np.ndarray) -> Diff:
        ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
        if ours.shape != ref.shape:
            return cls(float("inf"), float("inf"))
        diff = float(np.abs(ours - ref).max()) if ours.size else 0.0
        diff = diff if np.isfinite(diff) else float("inf")
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        return cls(diff, diff / scale if scale else (0.0 if diff == 0 else float("inf")))

    def to_json(self) -> dict:
        """inf and nan as strings (JSON has no numbers for them)."""
        return {k: v if np.isfinite(v) else str(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class Point:
    """One runnable point: the graph after a group of passes (or the traced graph)."""

    group: tuple[str, ...]
    passes: list[dict]  # the group's {"name", "rewrites"}
    tolerance: float
    precision: str  # what the tolerance is for: "fp32", or the lowered precision
    status: str = "ok"  # ok | diverged | unchanged | not run | failed
    reason: str | None = None
    layers: list[Diff | None] = dataclasses.field(default_factory=list)  # None: the layer's output not found
    logits: Diff | None = None

    @property
    def label(self) -> str:
        return "+".join(self.group)

    def first_layer_out(self) -> int | str | None:
        """The first layer (or "logits") beyond tolerance."""
        for i, d in enumerate(self.layers):
            if d is not None and not d.relative <= self.tolerance:
                return i
        if self.logits is not None and not self.logits.relative <= self.tolerance:
            return LOGITS
        return None

    def to_json(self) -> dict:
        return {"group": list(self.group), "passes": self.passes, "status": self.status, "reason": self.reason,
                "precision": self.precision, "tolerance": self.tolerance,
                "layers": [None if d is None else d.to_json() for d in self.layers],
                "logits": None if self.logits is None else self.logits.to_json()}


def bisect(artifact: Path | str, reference: Path | str | None, texts: Sequence[str] | None = None,
           progress: Progress | None = None) -> dict:
    """The report: every point's differences, OUT's logits, the first divergence and notes."""
    from gemma_export.checkpoints import open_source
    from gemma_runtime.manifest import read_manifest
    from gemma_runtime.tokenizer import Tokenizer

    started = time.time()
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    require_checkpoint(artifact, reference)
    source = open_source(reference)
    cfg = source.config
    if json.loads(json.dumps(cfg.to_dict())) != manifest.config:
        raise GemmaExportError(f"{source.description} is not the checkpoint {artifact} was exported from "
                               "(its model config differs from the manifest's)")
    options = recorded_options(manifest)
    ids = token_ids(Tokenizer.in_folder(artifact, manifest.tokens.bos), manifest.tokens.bos,
                    options.max_seq_len, list(texts or PROMPTS)[:1], cfg.vocab_size)[0]
    notes = []
    if manifest.sources != source.fingerprints:
        notes.append(f"{source.description}'s files differ from those {artifact} records having been exported from")
    plan = manifest.report.get("quantization", {}).get("choices")
    with tempfile.TemporaryDirectory(prefix="gemma-bisect-") as tmp:
        walk = reexport(source, options, ids, Path(tmp), plan, progress)
        out = walk.artifact_logits(artifact)
    notes += walk.notes
    if [p["name"] for p in manifest.passes] != [p["name"] for p in walk.passes]:
        notes.append(f"{artifact} was made by other passes than this version's (another gemma-export version): "
                     "the groups are this version's")
    else:
        counts = [f"{ours['name']} {ours['rewrites']} (OUT {theirs['rewrites']})"
                  for ours, theirs in zip(walk.passes, manifest.passes) if ours["rewrites"] != theirs["rewrites"]]
        if counts:
            notes.append(f"rewrites here differ from those OUT's manifest records: {', '.join(counts)}")
    finding = walk.finding
    return {
        "artifact": str(artifact), "reference": f"fp32 torch reference of {source.description}",
        "target": options.target, "dtype": options.dtype, "quant": options.quant,
        "options": dataclasses.asdict(options), "prompt_tokens": len(ids),
        "groups": [p.to_json() for p in walk.points],
        "artifact_logits": out,
        "first_divergence": finding,
        "verdict": verdict(finding, out, walk.points),
        "notes": notes,
        "seconds": round(time.time() - started, 2),
    }


def require_checkpoint(artifact: Path | str, reference: Path | str | None) -> None:
    """The reference of a bisect is the checkpoint to export again (None: the embedded default), not an artifact."""
    from gemma_runtime.manifest import MANIFEST_FILE

    if reference is not None and (Path(reference) / MANIFEST_FILE).is_file():
        raise GemmaExportError(f"--bisect exports again from the checkpoint {artifact} was exported from; "
                               f"{reference} is an artifact: pass that checkpoint (HF folder or .gguf) as --reference")


def recorded_options(manifest) -> ExportOptions:
    """The options OUT was exported with, as far as its manifest records them (a recipe's budget is
    not recorded: its choices are, and reexport() replays them)."""
    from gemma_export.export import resolve_options

    quant = manifest.quant
    choices = manifest.report.get("quantization", {}).get("choices", {})
    return resolve_options(ExportOptions(
        target=manifest.target, dtype=manifest.dtype, quant=quant["method"], block_size=quant["block_size"],
        calibrate=quant["calibrated"], keep_embeddings_fp=quant["method"] != "none" and EMBEDDING not in choices,
        max_seq_len=manifest.kv_cache.max_seq_len))


def reexport(source, options: ExportOptions, ids: list[int], folder: Path, plan: dict[str, str] | None = None,
             progress: Progress | None = None) -> Walk:
    """Runs the export's passes again on `source`, checking the graph at every runnable point;
    `plan`: the quantization recipe's choices to use instead of measuring them again."""
    from gemma_export import export as export_module
    from gemma_export.frontend.trace import bind_weights
    from gemma_export.passes.pipeline import pipeline, run_pipeline, runnable_groups

    say = progress or (lambda what, done, total: None)
    cfg = source.config
    say("reference", 0, 1)
    logits, layers = reference_hidden_states(source, ids)
    say("tracing", 0, 1)
    model = export_module.trace(cfg)  # the export's own (tests cache it there)
    bind_weights(model, source.weights)
    ctx = export_module.pass_context(cfg, options, source.tokenizer(), source.weights)
    groups = runnable_groups(pipeline(ctx.target, ctx.options, ctx.config))
    walk = Walk(ids, logits, layers, options, _Runner(folder), lambda done: say("checking groups", done, len(groups) + 1))
    walk.check_traced(model)

    def replay(name: str, rewrites: int) -> None:
        if name == "quant_recipe" and plan is not None and ctx.quant_plan != plan:
            changed = sorted(k for k in {*plan, *ctx.quant_plan} if plan.get(k) != ctx.quant_plan.get(k))
            walk.notes.append(f"quant_recipe chose differently this time for {len(changed)} weight(s) "
                              f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); OUT's choices were used")
            ctx.quant_plan = dict(plan)

    walk.passes = run_pipeline(model, ctx, on_pass=replay, after_group=walk.after_group)
    return walk


def reference_hidden_states(source, ids: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The fp32 torch reference's logits [1, n, vocab] and residual stream after each layer [1, n, hidden]."""
    from gemma_graphs.gemma import load_reference

    logits, layers = reference_prefill(load_reference(source.config, source.weights), source.config, ids)
    return logits.numpy(), [x.numpy() for x in layers]


@dataclasses.dataclass
class Snapshot:
    """A point's graph, kept to be run again: the model proto (large tensors in the scratch file), its
    inputs, and its structure (node order, what each node read, what each value means)."""

    feeds: dict[str, np.ndarray]
    nodes: list[ir.Node]
    reads: dict[ir.Node, tuple]  # node -> what makes it itself: op, inputs, their tensors, attributes
    producer: dict[ir.Value, ir.Node]
    names: dict[str, str]  # meaning -> value name
    meaning: dict[ir.Value, str]
    layer_outputs: dict[int, ir.Value]
    logits: ir.Value
    opsets: dict[str, int]
    kept: list  # the objects `reads` refers to by id, kept alive
    proto: onnx.ModelProto | None = None  # set where the graph is run

    @classmethod
    def of(cls, model: ir.Model, ids: list[int]) -> Snapshot:
        graph = model.graph
        nodes = list(graph)
        reads, kept = {}, []
        for node in nodes:
            tensors = [v.const_value if v is not None else None for v in node.inputs]
            kept += [*node.inputs, *tensors]
            reads[node] = (node.op_type, node.domain, tuple(map(id, node.inputs)), tuple(map(id, tensors)),
                           repr(sorted((k, repr(a.value)) for k, a in node.attributes.items())))
        values = [v for node in nodes for v in node.outputs]
        meaning = {v: v.metadata_props[MEANING] for v in values if MEANING in v.metadata_props}
        layer_outputs = {int(v.metadata_props[LAYER_OUTPUT]): v for v in values if LAYER_OUTPUT in v.metadata_props}
        return cls(calibrate.prefill_feeds(graph, ids), nodes, reads,
                   {v: node for node in nodes for v in node.outputs}, {m: v.name for v, m in meaning.items()},
                   meaning, layer_outputs, next(v for v in graph.outputs if v.name == LOGITS),
                   dict(model.opset_imports), kept)

    def same_graph(self, other: Snapshot) -> bool:
        return self.nodes == other.nodes and [self.reads[n] for n in self.nodes] == [other.reads[n] for n in other.nodes] \
            and self.logits is other.logits and self.opsets == other.opsets

    def changed_since(self, node: ir.Node, before: Snapshot) -> bool:
        """Whether the group that made this graph from `before` created the node or rewired it."""
        return before.reads.get(node) != self.reads[node]

    def region(self, layer: int | str, layers: int) -> list[ir.Node]:
        """The nodes computing a layer's output (or the logits) beyond what the previous layer's
        output needs, in graph order."""
        end = self.logits if layer == LOGITS else self.layer_outputs.get(layer)
        start = self.layer_outputs.get(layers - 1 if layer == LOGITS else layer - 1)
        if end is None:
            return []
        needed = self._ancestors(end)
        if start is not None:
            needed -= self._ancestors(start)
        return [n for n in self.nodes if n in needed]

    def _ancestors(self, value: ir.Value) -> set[ir.Node]:
        seen, stack = set(), [value]
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and node not in seen:
                seen.add(node)
                stack.extend(v for v in node.inputs if v is not None)
        return seen


class Walk:
    """The checks of one re-export, point after point (check_traced, then after_group for each group)."""

    def __init__(self, ids: list[int], ref_logits: np.ndarray, ref_layers: list[np.ndarray],
                 options: ExportOptions, runner: _Runner, on_point: Callable[[int], None] = lambda done: None):
        self.ids, self.ref_logits, self.ref_layers = ids, ref_logits, ref_layers
        self.options, self.runner, self.on_point = options, runner, on_point
        self.points: list[Point] = []
        self.snapshots: list[Snapshot | None] = []  # per point; None where the graph was not saved
        self.passes: list[dict] = []
        self.notes: list[str] = []
        self.finding: dict | None = None
        self.precision, self.tolerance = "fp32", FP32_RELATIVE_TOLERANCE
        self._last_ok: int | None = None  # the latest point within tolerance

    def check_traced(self, model: ir.Model) -> None:
        """The traced graph, before any pass: its values get their meanings and layer marks here."""
        mark_layer_outputs(model.graph, self.ref_layers[0].shape[-1])
        self.after_group(TRACED, [], model)

    def after_group(self, group: tuple[str, ...], entries: list[dict], model: ir.Model) -> None:
        for entry in entries:
            lowered = _lowered_precision(entry["name"], self.options)
            if lowered is not None and LOW_PRECISION_TOLERANCE[lowered] > self.tolerance:
                self.precision, self.tolerance = lowered, LOW_PRECISION_TOLERANCE[lowered]
        index = len(self.points)
        for value in (v for node in model.graph for v in node.outputs):
            value.metadata_props.setdefault(MEANING, f"{index}:{value.name}")  # values this group made
        point = Point(group, entries, self.tolerance, self.precision)
        self.points.append(point)
        previous = next((s for s in reversed(self.snapshots) if s is not None), None)
        snapshot = Snapshot.of(model, self.ids)
        if previous is not None and snapshot.same_graph(previous):
            last = next(p for p in reversed(self.points[:-1]) if p.status != "unchanged")
            point.status, point.layers, point.logits = "unchanged", last.layers, last.logits
            self.snapshots.append(None)
        else:
            snapshot.proto = self.runner.proto(model)
            self.snapshots.append(snapshot)
            self._run(point, snapshot)
        self.on_point(index + 1)

    def _run(self, point: Point, snapshot: Snapshot) -> None:
        layers = [snapshot.layer_outputs.get(i) for i in range(len(self.ref_layers))]
        names = [LOGITS, *(v.name for v in layers if v is not None)]
        try:
            arrays = self.runner.run(snapshot.proto, snapshot.feeds, names)
        except NoKernel as e:
            point.status, point.reason = "not run", f"no CPU kernel here: {_first_line(e)}"
            return
        except Exception as e:  # noqa: BLE001 - a graph onnxruntime refuses is this group's finding
            point.status, point.reason = "failed", _first_line(e)
            self._found(len(self.points) - 1, None)
            return
        point.logits = Diff.of(arrays[LOGITS], self.ref_logits)
        point.layers = [None if v is None else Diff.of(arrays[v.name], ref) for v, ref in zip(layers, self.ref_layers)]
        missing = [i for i, v in enumerate(layers) if v is None]
        if missing and not any(n.startswith(f"no output found for layer(s) {missing}") for n in self.notes):
            self.notes.append(f"no output found for layer(s) {missing} from group {point.label} on: not compared")
        out = point.first_layer_out()
        if out is None:
            self._last_ok = len(self.points) - 1
            return
        point.status = "diverged"
        self._found(len(self.points) - 1, out)

    def _found(self, index: int, layer: int | str | None) -> None:
        if self.finding is not None:
            return
        point = self.points[index]
        since = self.points[(self._last_ok or 0) + 1:index]
        self.finding = {"group": list(point.group), "point": index, "layer": layer, "status": point.status,
                        "reason": point.reason, "node_search": None,
                        "not_run_before": [p.label for p in since if p.status == "not run"]}
        if layer is not None and self._last_ok is not None and point.group != TRACED:
            self.finding["node_search"] = self.node_search(self._last_ok, index, layer)

    def node_search(self, before: int, after: int, layer: int | str) -> dict:
        """Within one layer (or "logits"), the values both points' graphs compute, compared; the node
        the first difference beyond the later point's tolerance points at (see the module docstring)."""
        old, new = self.snapshots[before], self.snapshots[after]
        tolerance = self.points[after].tolerance
        region = new.region(layer, len(self.ref_layers))
        pairs = [(v, old.names[new.meaning[v]]) for node in region for v in node.outputs
                 if v in new.meaning and new.meaning[v] in old.names]
        try:
            ours = self.runner.run(new.proto, new.feeds, [v.name for v, _ in pairs])
            theirs = self.runner.run(old.proto, old.feeds, [name for _, name in pairs])
        except Exception as e:  # noqa: BLE001 - reported, the verdict stands without a node
            return {"found": False, "message": f"the node search could not run: {_first_line(e)}"}
        agreeing, first = set(), None
        for value, old_name in pairs:
            a, b = ours[value.name], theirs[old_name]
            if a.dtype.kind != "f" or b.dtype.kind != "f" or a.shape != b.shape:
                continue
            diff = Diff.of(a, b)
            if diff.relative <= tolerance:
                agreeing.add(value)
            elif first is None:
                first = (value, diff)
        changed = [n for n in region if new.changed_since(n, old)]
        where = f"layer {layer}" if layer != LOGITS else "the logits"
        if first is None:
            message = f"no value of {where} that both graphs compute differs beyond {tolerance:g}"
            node = changed[0] if changed else None
            return {"found": False, "message": message, "compared": len(pairs),
                    "node": _describe(node) if node else None, "candidates": [_describe(n) for n in changed[:8]]}
        value, diff = first
        candidates = self._feeding(new, new.producer[value], agreeing, set(region), old)
        node = candidates[0] if candidates else new.producer[value]
        return {"found": True, "compared": len(pairs), "node": _describe(node),
                "value": {"name": value.name, "produced_by": _describe(new.producer[value]), **diff.to_json()},
                "candidates": [_describe(n) for n in candidates]}

    @staticmethod
    def _feeding(graph: Snapshot, node: ir.Node, agreeing: set, region: set, before: Snapshot) -> list[ir.Node]:
        """The group's nodes (created or rewired) that compute `node`'s output from agreeing values,
        `node` included when it is one, in graph order."""
        found, seen, stack = set(), set(), [node]
        while stack:
            n = stack.pop()
            if n in seen or n not in region:
                continue
            seen.add(n)
            if graph.changed_since(n, before):
                found.add(n)
            stack.extend(graph.producer[v] for v in n.inputs
                         if v is not None and v not in agreeing and v in graph.producer)
        return [n for n in graph.nodes if n in found]

    def artifact_logits(self, artifact: Path) -> dict:
        """OUT's own logits for the same ids, against the reference, at the last point's tolerance."""
        import gemma_runtime
        from gemma_runtime.errors import RuntimeInputError

        try:
            model = gemma_runtime.load(artifact, device="cpu")
        except RuntimeInputError as e:  # e.g. bf16 compute: no CPU kernels
            return {"status": "not run", "reason": _first_line(e), "tolerance": self.tolerance, "logits": None}
        logits = model.logits(self.ids)
        diff = Diff.of(logits[None], self.ref_logits)
        return {"status": "ok" if diff.relative <= self.tolerance else "diverged", "reason": None,
                "tolerance": self.tolerance, "logits": diff.to_json()}


def mark_layer_outputs(graph: ir.Graph, hidden: int) -> None:
    """Marks each decoder layer's output in the traced graph: the one [batch, seq, hidden] float
    value the layer's nodes (by their torch module scope) compute and a node outside it reads; a
    layer with none, or several, stays unmarked (and is not compared)."""
    layer_of = {}
    for node in graph:
        scope = _LAYER_SCOPE.search(node.metadata_props.get(SCOPES, ""))
        layer_of[node] = int(scope.group(1)) if scope else None
    found: dict[int, list[ir.Value]] = {}
    for node, layer in layer_of.items():
        for value in node.outputs if layer is not None else ():
            shape = value.shape
            if value.dtype == ir.DataType.FLOAT and shape is not None and shape.rank() == 3 and shape[2] == hidden \
                    and any(layer_of.get(user) != layer for user, _ in value.uses()):
                found.setdefault(layer, []).append(value)
    for layer, values in found.items():
        if len(values) == 1:
            values[0].metadata_props[LAYER_OUTPUT] = str(layer)


class _Runner:
    """Runs a point's graph in onnxruntime on the CPU. Its large tensors are written once each (by
    tensor object: passes make new tensors rather than change one) to a scratch file that every
    saved graph refers to, so a point costs only the tensors its group made."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.data = folder / "tensors.bin"
        self.data.touch()
        self.written: dict[int, tuple[int, int]] = {}  # id(tensor) -> (offset, length)
        self.kept: list = []  # the tensors, so that no id is reused
        self.saved = 0

    def proto(self, model: ir.Model) -> onnx.ModelProto:
        with calibrate.without_data(model) as large:
            proto = ir.serde.serialize_model(model)
        proto.graph.initializer.extend(self._external(value) for value in large)
        return proto

    def _external(self, value: ir.Value) -> onnx.TensorProto:
        tensor = value.const_value
        if id(tensor) not in self.written:
            with self.data.open("ab") as f:
                f.write(b"\0" * (-f.tell() % 64))
                offset = f.tell()
                as_streamed(tensor).tofile(f)
                self.written[id(tensor)] = (offset, f.tell() - offset)
            self.kept.append(tensor)
        offset, length = self.written[id(tensor)]
        proto = onnx.TensorProto(name=value.name, dims=list(tensor.shape.numpy()), data_type=int(tensor.dtype),
                                 data_location=onnx.TensorProto.EXTERNAL)
        for key, text in (("location", self.data.name), ("offset", str(offset)), ("length", str(length))):
            proto.external_data.add(key=key, value=text)
        return proto

    def run(self, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """The named values, graph outputs or not."""
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        names = list(dict.fromkeys(outputs))
        declared = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in declared)
        path = self.folder / f"graph-{self.saved}.onnx"
        self.saved += 1
        onnx.save(model, path)
        try:
            arrays = calibrate.cpu_session(str(path)).run(names, feeds)
        finally:
            path.unlink()
        return dict(zip(names, arrays))


def _lowered_precision(pass_name: str, options: ExportOptions) -> str | None:
    """The precision a pass lowers the graph to under these options (None: it keeps fp32's)."""
    if pass_name == "precision" and options.dtype != "fp32":
        return options.dtype
    if pass_name in QUANTIZERS and options.quant != "none":
        return options.quant.removesuffix("-uniform")
    return None


def _describe(node: ir.Node) -> dict:
    return {"name": node.name, "op": node.op_type if not node.domain else f"{node.domain}::{node.op_type}"}


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def verdict(finding: dict | None, artifact: dict, points: list[Point]) -> str:
    """One line for people."""
    if finding is None:
        skipped = [p.label for p in points if p.status == "not run"]
        line = "every group within tolerance" if not skipped else \
            f"every group that ran within tolerance (not run here: {', '.join(skipped)})"
        if artifact["status"] == "diverged":
            line += ("; OUT itself is not: it was not made by these passes from this checkpoint "
                     "(another version, other options, or changed since)")
        return line
    group = "the traced graph (before any pass: the front end or onnxruntime's kernels)" \
        if tuple(finding["group"]) == TRACED else f"group {'+'.join(finding['group'])}"
    if finding["not_run_before"]:
        group += f" (or {', '.join(finding['not_run_before'])} before it, which could not run here)"
    if finding["status"] == "failed":
        return f"first divergence: {group} (its graph fails in onnxruntime: {finding['reason']})"
    where = "the logits" if finding["layer"] == LOGITS else f"layer {finding['layer']}"
    search = finding["node_search"]
    node = f", node {search['node']['name']} ({search['node']['op']})" if search and search.get("node") else ""
    return f"first divergence: {group}, {where}{node}"


def format_report(report: dict) -> str:
    """The table of max |diff| / max |ref| per layer per group, OUT's row, and the verdict."""
    groups = report["groups"]
    layers = max((len(g["layers"]) for g in groups), default=0)
    label = lambda group: group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"  # noqa: E731
    width = max(len(label(g["group"])) for g in groups) + 2
    lines = [f"max |diff| / max |reference| per layer, {report['prompt_tokens']} tokens "
             f"(* beyond the group's tolerance)",
             f"{'group':<{width}}{'tol':>8}" + "".join(f"{i:>9}" for i in range(layers)) + f"{LOGITS:>9}"]

    def cell(diff: dict | None, tolerance: float) -> str:
        if diff is None:
            return f"{'-':>9}"
        return f"{diff['relative']:>8.1e}" + ("*" if not diff["relative"] <= tolerance else " ")

    for g in groups:
        row = f"{label(g['group']):<{width}}{g['tolerance']:>8.0e}"
        if g["status"] in ("not run", "failed"):
            row += f"  {g['status']}: {g['reason']}"
        elif g["status"] == "unchanged":
            row += "  (unchanged)"
        else:
            row += "".join(cell(d, g["tolerance"]) for d in g["layers"]) + cell(g["logits"], g["tolerance"])
        lines.append(row)
    out = report["artifact_logits"]
    row = f"{'OUT (as written)':<{width}}{out['tolerance']:>8.0e}"
    lines.append(row + (f"  {out['status']}: {out['reason']}" if out["logits"] is None else
                        f"{'':>{9 * layers}}" + cell(out["logits"], out["tolerance"])))
    search = (report["first_divergence"] or {}).get("node_search")
    if search is not None:
        if search["found"]:
            value = search["value"]
            lines.append(f"first differing value: {value['name']} from {value['produced_by']['name']} "
                         f"({value['produced_by']['op']}), {value['relative']:.2e} of its reference; the group's "
                         f"nodes computing it: {', '.join(c['name'] for c in search['candidates']) or 'none'}")
        else:
            lines.append(f"node search: {search['message']}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append(report["verdict"])
    return "\n".join(lines)
