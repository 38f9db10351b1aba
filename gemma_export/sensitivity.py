"""How much the model's output moves when one weight alone is quantized: the measurement the
quantization recipe (passes/quant_recipe.py) chooses widths by.

The graph as it stands (fp32, before any quantizer) runs in onnxruntime over calibration text
with its large weights fed as inputs (memory-mapped from a scratch file, so swapping one weight
for its quantized round trip costs no new session). In front of each quantized product, the
kernel's own rounding of its input is emulated too where the target has one (MatMulNBits at
accuracy level 4 rounds activations to int8 per block), switched on by a flag input for that
weight only. The graph also computes sum(p * (log p - log q)) over positions and the vocabulary
against the fp32 run's own log-probabilities (the same kernels: an unquantized run gives exactly
0), so each measurement returns one number, not the logits, and small KLs (int8's) are not lost
in the rounding of two large sums.

The narrowest width is measured for every weight; a wider width's KL is scaled from it by the
ratio of the product's output errors on the calibration activations (a quadratic model of KL in
the output perturbation), which costs numpy time instead of a model run. Float costs nothing.
A quantized GGUF's own blocks (width "source") are the graph's weights already: measuring them
swaps no weight and measures the kernel's input rounding alone. A lookup table (no product reads
it) scales by the ratio of its weights' own squared errors instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from gemma_export import calibrate, quant
from gemma_export.passes.context import PassContext
from gemma_export.tensors import as_streamed

if TYPE_CHECKING:
    from gemma_export.passes.quant_recipe import Unit

TOKENS = 320  # calibration tokens per measurement
ROUND_TRIP_CHUNK = 64 * 2 ** 20  # bytes of a table's rows quantized at a time
GATHER_BUDGET = 2 * 2 ** 30  # bytes of gathered expert weights one measuring call may hold
MIN_PIECE = 8
POSITION_STRIDE = 2  # KL at every other position (the lm_head is most of the 270M's work)
ERROR_ROWS = 2048  # output channels sampled for the output-error ratio
REFERENCE_P = "sensitivity.reference_probs"
REFERENCE_LOGP = "sensitivity.reference_log_probs"
LOG_PROBS = "sensitivity.log_probs"
KL_SUM = "sensitivity.kl_sum"

SchemeOf = Callable[["Unit", str], "quant.Scheme | None"]
KEEPS_WEIGHTS = "source"  # the width whose stored values are the graph's own


def measure(model: ir.Model, ctx: PassContext, units: list[Unit], widths: tuple[str, ...],
            scheme_of: SchemeOf) -> tuple[dict[str, dict[str, float]], int]:
    """{weight name: {width: KL(fp32 || that weight at that width) per position}}, and the number of
    calibration tokens run."""
    sequences = _sequences(ctx)
    with tempfile.TemporaryDirectory(prefix="gemma-sensitivity-") as tmp:
        narrowest = widths[0]
        blocks = {u.name: scheme_of(u, narrowest).block for u in units}
        session, held, flags, inputs_of = _session(model, ctx, units, blocks, Path(tmp))
        weights = dict(held)
        base = [_feeds(model.graph, ids, session) for ids in sequences]
        for f in base:
            f.update({name: np.zeros((), np.float32) for name in flags.values()})
        # fp32: the reference distributions and every product's input
        x_names = [x for x in dict.fromkeys(inputs_of.values()) if x is not None]
        references, activations = [], {n: [] for n in x_names}
        none = np.zeros((1, 1, 1), np.float32)
        for f in base:
            logp, *xs = session.run([LOG_PROBS, *x_names], {**f, **weights, REFERENCE_P: none, REFERENCE_LOGP: none})
            references.append({REFERENCE_P: np.exp(logp), REFERENCE_LOGP: logp})
            for n, x in zip(x_names, xs):
                activations[n].append(x.reshape(-1, x.shape[-1]))
        positions = sum(r[REFERENCE_P].shape[1] for r in references)
        result = {}
        for unit in units:
            scheme = scheme_of(unit, narrowest)
            rows = _rows(held[unit.name], unit)
            if narrowest != KEEPS_WEIGHTS:
                weights[unit.name] = _round_trip(held[unit.name], unit, scheme, Path(tmp) / "swapped.bin")
            total = 0.0
            for f, ref in zip(base, references):
                total += float(session.run([KL_SUM], {**f, **weights, **ref, flags[unit.name]: np.ones((), np.float32)})[0])
            weights[unit.name] = held[unit.name]
            kl = max(0.0, total / positions)
            x = np.concatenate(activations[inputs_of[unit.name]]) if inputs_of[unit.name] else None
            errors = {w: _output_error(rows, x, scheme_of(unit, w), ctx.target.int8_activations, w == KEEPS_WEIGHTS)
                      for w in widths}
            result[unit.name] = {w: 0.0 if errors[narrowest] == 0 else kl * errors[w] / errors[narrowest]
                                 for w in widths}
        return result, sum(map(len, sequences))


def _sequences(ctx: PassContext) -> list[list[int]]:
    """Calibration sequences, cut to TOKENS tokens in all, in pieces of at most _piece_length()
    tokens, each after the first led by BOS again (a piece is measured without what came before)."""
    out, left = [], TOKENS
    piece = _piece_length(ctx)
    bos = ctx.config.bos_token_id
    for ids in calibrate.sequences(ctx):
        if left <= 1:
            break
        ids = ids[:left]
        left -= len(ids)
        out.extend(_split(ids, piece, bos))
    return out


def _split(ids: list[int], piece: int, bos: int) -> list[list[int]]:
    """ids in pieces of at most `piece` tokens, each after the first led by BOS."""
    return [ids[:piece]] + [[bos, *ids[i: i + piece - 1]] for i in range(piece, len(ids), piece - 1)]


def _piece_length(ctx: PassContext) -> int:
    """The routed experts gather each token's top-k experts' weights: a prefill of n tokens holds
    n x top_k experts in fp32 (26B-A4B: ~182 MiB a token). Their pieces stay within GATHER_BUDGET
    (but are never shorter than MIN_PIECE)."""
    cfg = ctx.config
    if not cfg.num_experts:
        return TOKENS
    per_token = cfg.top_k_experts * 3 * cfg.hidden_size * cfg.moe_intermediate_size * 4  # gate, up, down
    return max(MIN_PIECE, min(TOKENS, GATHER_BUDGET // per_token))


def _round_trip(stored: np.ndarray, unit: Unit, scheme: quant.Scheme, path: Path) -> np.ndarray:
    """The unit's fed array with its values quantized and dequantized. A table stored as rows (the
    embedding, a lookup table: up to ~9 GiB in fp32) goes through in chunks of rows into a
    memory-mapped file, so no copy of it is ever whole in memory; a product's weight is small."""
    if not unit.stored_as_rows:
        return np.ascontiguousarray(quant.quantize_dequantize(np.asarray(stored.T, np.float32), scheme).T)
    n, k = unit.shape
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, k))
    step = max(1, ROUND_TRIP_CHUNK // (4 * k))
    rows = stored.reshape(n, k)
    for a in range(0, n, step):
        out[a: a + step] = quant.quantize_dequantize(np.asarray(rows[a: a + step], np.float32), scheme)
    out.flush()
    return out.reshape(stored.shape)


def _rows(stored: np.ndarray, unit: Unit) -> np.ndarray:
    """The unit's [out, in] rows (Unit.rows(), from the fed array)."""
    return np.asarray(stored.reshape(unit.shape) if unit.stored_as_rows else stored.T, dtype=np.float32)


def _output_error(rows: np.ndarray, x: np.ndarray, scheme: quant.Scheme | None, int8_inputs: bool,
                  keeps_weights: bool) -> float:
    """||Qa(x) Q(W)^T - x W^T||^2 over sampled output channels (0 for float; Q(W) = W when the
    weights are kept); ||Q(W) - W||^2 for a lookup table (x None)."""
    if scheme is None:
        return 0.0
    w = rows[:: max(1, -(-rows.shape[0] // ERROR_ROWS))]
    wq = w if keeps_weights else quant.quantize_dequantize(w, scheme)
    if x is None:
        return float(np.square(wq - w).sum())
    xq = quant.int8_blocks(x, scheme.block) if int8_inputs else x
    return float(np.square(xq @ wq.T - x @ w.T).sum())


def _feeds(graph: ir.Graph, ids: list[int], session: ort.InferenceSession) -> dict[str, np.ndarray]:
    feeds = calibrate.prefill_feeds(graph, ids)
    if "logits_index" in feeds:
        feeds["logits_index"] = np.arange(0, len(ids), POSITION_STRIDE, dtype=np.int64)[None]
    return feeds


def _session(model: ir.Model, ctx: PassContext, units: list[Unit], blocks: dict[str, int], tmp: Path):
    """The measuring session; the fp32 weights it is fed (name -> memory-mapped array, every large
    initializer); the flag input switching each unit's activation rounding (in blocks of its
    weight's block); each unit's product input (the activation, by value name)."""
    with calibrate.without_data(model, also={unit.name for unit in units}) as large:
        proto = ir.serde.serialize_model(model)
    graph = proto.graph
    infos = {vi.name: vi for vi in graph.value_info}
    held = _write_and_map(large, tmp / "weights.bin")
    for value in large:
        graph.input.append(infos[value.name])
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    flags, inputs_of = {}, {}
    by_output = {n.output[0]: n for n in graph.node}
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    for i, unit in enumerate(units):
        flag = f"sensitivity.flag.{i}"
        flags[unit.name] = flag
        graph.input.append(onnx.helper.make_tensor_value_info(flag, onnx.TensorProto.FLOAT, []))
        inputs_of[unit.name] = unit.products[0].inputs[0].name if unit.products else None
        if not ctx.target.int8_activations:
            continue
        block = blocks[unit.name]
        for product in unit.products:
            node = by_output[product.outputs[0].name]
            x = node.input[0]
            rounded, nodes = _int8_rounding(x, f"sensitivity.{i}.{product.outputs[0].name}", block, unit.shape[1],
                                            flag, opset)
            node.input[0] = rounded
            new_nodes.setdefault(id(node), []).extend(nodes)
    ordered = []
    for node in graph.node:
        ordered.extend(new_nodes.get(id(node), []))
        ordered.append(node)
    ordered += _kl_nodes()
    del graph.node[:]
    graph.node.extend(ordered)
    for name in (REFERENCE_P, REFERENCE_LOGP):
        graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["b", "p", "v"]))
    graph.output.append(onnx.helper.make_tensor_value_info(KL_SUM, onnx.TensorProto.FLOAT, []))
    graph.output.append(onnx.helper.make_empty_tensor_value_info(LOG_PROBS))
    declared = {o.name for o in graph.output}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in dict.fromkeys(inputs_of.values())
                        if x is not None and x not in declared)
    path = tmp / "sensitivity.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="sensitivity.onnx.data")
    session = calibrate.cpu_session(str(path), threads=os.cpu_count() or 1)
    return session, held, flags, inputs_of


def _write_and_map(values: list[ir.Value], path: Path) -> dict[str, np.ndarray]:
    offsets = {}
    with path.open("wb") as f:
        for value in values:
            offsets[value.name] = f.tell()
            as_streamed(value.const_value).tofile(f)
    mapped = {}
    for value in values:
        t = value.const_value
        mapped[value.name] = np.memmap(path, dtype=t.dtype.numpy(), mode="r", offset=offsets[value.name],
                                       shape=tuple(t.shape.numpy()))
    return mapped


def _int8_rounding(x: str, prefix: str, block: int, k: int, flag: str, opset: int) -> tuple[str, list]:
    """x + flag * (int8_blocks(x) - x), in standard ops (quant.int8_blocks' rounding)."""
    make, c = onnx.helper.make_node, onnx.helper.make_tensor
    n = lambda s: f"{prefix}.{s}"  # noqa: E731
    consts = [
        make("Constant", [], [n("blocks")], value=c(n("blocks.v"), onnx.TensorProto.INT64, [3], [-1, k // block, block])),
        make("Constant", [], [n("int8_max")], value=c(n("int8_max.v"), onnx.TensorProto.FLOAT, [], [127.0])),
        make("Constant", [], [n("tiny")], value=c(n("tiny.v"), onnx.TensorProto.FLOAT, [], [1e-30])),
    ]
    reduce = make("ReduceMax", [n("abs"), n("axis")], [n("max")], keepdims=1) if opset >= 18 else \
        make("ReduceMax", [n("abs")], [n("max")], axes=[-1], keepdims=1)
    if opset >= 18:
        consts.append(make("Constant", [], [n("axis")], value=c(n("axis.v"), onnx.TensorProto.INT64, [1], [-1])))
    nodes = consts + [
        make("Shape", [x], [n("shape")]),
        make("Reshape", [x, n("blocks")], [n("x")]),
        make("Abs", [n("x")], [n("abs")]),
        reduce,
        make("Div", [n("max"), n("int8_max")], [n("scale")]),
        make("Max", [n("scale"), n("tiny")], [n("safe")]),
        make("Div", [n("x"), n("safe")], [n("scaled")]),
        make("Round", [n("scaled")], [n("codes")]),
        make("Mul", [n("codes"), n("scale")], [n("q")]),
        make("Reshape", [n("q"), n("shape")], [n("rounded")]),
        make("Sub", [n("rounded"), x], [n("delta")]),
        make("Mul", [n("delta"), flag], [n("switched")]),
        make("Add", [x, n("switched")], [n("out")]),
    ]
    return n("out"), nodes


def _kl_nodes() -> list:
    """sum(p * (log p - log_softmax(logits))) over every position and the vocabulary."""
    make = onnx.helper.make_node
    return [
        make("LogSoftmax", ["logits"], [LOG_PROBS], axis=-1),
        make("Sub", [REFERENCE_LOGP, LOG_PROBS], ["sensitivity.log_ratio"]),
        make("Mul", [REFERENCE_P, "sensitivity.log_ratio"], ["sensitivity.weighted"]),
        make("ReduceSum", ["sensitivity.weighted"], [KL_SUM], keepdims=0),
    ]
