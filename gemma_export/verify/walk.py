"""The checks of one re-export in bisect (pass_bisect.py): after each runnable group of passes the
graph runs in onnxruntime (gemma_export/ort_run.py) and each layer's output and the logits are
compared with the fp32 reference (compare.Diff) at the group's tolerance; the first group out of
it is searched for the node (node_search)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NoKernel

from gemma_export import ort_run
from gemma_export.quantization.method import QuantMethod
from gemma_export.targets import QUANTIZERS, ExportOptions
from gemma_export.verify.compare import FP32_RELATIVE_TOLERANCE, Diff
from gemma_export.verify.snapshot import MEANING, Snapshot, mark_layer_outputs
from gemma_graphs.config import GemmaConfig
from gemma_runtime.interface import LOGITS

# max |diff| / max |reference| once a precision is lowered: about 3x (int4: 2x) the largest a clean
# export showed, on any layer or the logits, over the tiny test models (tests/tiny.py: 4 configs x
# ort-cpu / onnx, uniform widths and recipes) and the real Gemma 3 270M. Largest seen: fp16 5.2e-3,
# bf16 1.6e-2, int8 8.2e-2, int4 0.49 (tiny, random weights; the 270M: fp16 1.0e-3, int8 1.5e-2,
# int4 3.1e-2). A GGUF's own blocks (source) get int4's.
LOW_PRECISION_TOLERANCE = {"fp16": 0.015, "bf16": 0.05, "int8": 0.25, "int4": 1.0, "source": 1.0}
TRACED = ("(traced)",)  # the group label of the traced graph


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


class Walk:
    """The checks of one re-export, point after point (check_traced, then after_group for each group)."""

    def __init__(self, ids: list[int], ref_logits: np.ndarray, ref_layers: list[np.ndarray],
                 options: ExportOptions, tensors: ort_run.TensorFile, on_point: Callable[[int], None] = lambda done: None):
        self.ids, self.ref_logits, self.ref_layers = ids, ref_logits, ref_layers
        self.options, self.tensors, self.on_point = options, tensors, on_point
        self.points: list[Point] = []
        self.snapshots: list[Snapshot | None] = []  # per point; None where the graph was not saved
        self.passes: list[dict] = []
        self.notes: list[str] = []
        self.finding: dict | None = None
        self.precision, self.tolerance = "fp32", FP32_RELATIVE_TOLERANCE
        self._last_ok: int | None = None  # the latest point within tolerance

    def check_traced(self, model: ir.Model, cfg: GemmaConfig) -> None:
        """The traced graph, before any pass: its values get their meanings and layer marks here."""
        mark_layer_outputs(model.graph, cfg)
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
            snapshot.proto = ort_run.model_proto(model, self.tensors)
            self.snapshots.append(snapshot)
            self._run(point, snapshot)
        self.on_point(index + 1)

    def _run_graph(self, proto: onnx.ModelProto, feeds: dict[str, np.ndarray],
                   names: list[str]) -> dict[str, np.ndarray]:
        return ort_run.run(proto, feeds, names, self.tensors.folder)

    def _run(self, point: Point, snapshot: Snapshot) -> None:
        layers = [snapshot.layer_outputs.get(i) for i in range(len(self.ref_layers))]
        names = [LOGITS, *(v.name for v in layers if v is not None)]
        try:
            arrays = self._run_graph(snapshot.proto, snapshot.feeds, names)
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
            ours = self._run_graph(new.proto, new.feeds, [v.name for v, _ in pairs])
            theirs = self._run_graph(old.proto, old.feeds, [name for _, name in pairs])
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


def _lowered_precision(pass_name: str, options: ExportOptions) -> str | None:
    """The precision a pass lowers the graph to under these options (None: it keeps fp32's)."""
    if pass_name == "precision" and options.dtype != "fp32":
        return options.dtype
    method = QuantMethod.parse(options.quant)
    if pass_name in QUANTIZERS and method.quantizes:
        return method.precision
    return None


def _describe(node: ir.Node) -> dict:
    return {"name": node.name, "op": node.op_type if not node.domain else f"{node.domain}::{node.op_type}"}


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
