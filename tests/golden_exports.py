"""A golden fixture of what the compiler emits: for each tiny config x target x precision, the
op multiset of the exported graph (and of its function bodies), its inputs and outputs, and a
sha256 of every initializer (dtype, dims and bytes).

It was captured before a refactor that must not change behaviour, and `test_golden_exports.py`
checks every later export against it, byte for byte, on any host: every case is one whose bytes
the README promises across hosts (the calibrated cases' scales come from the float64 measurement,
rounded to powers of two; the fp16 and bf16 cases keep no tensor near fp16's limit, the one
host-dependent decision). Captured last on an AVX2 host; tests/test_host_independence.py checks the
measured cases against SSE4.2 kernels on whatever host runs it. Capture again only on purpose, when a change is meant to
alter the emitted graphs, and say why in the commit:

    python tests/golden_exports.py --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "golden" / "exports.json"
MAX_SEQ_LEN = 32

FP32_TARGETS = ("generic", "onnx", "ort-cpu", "ort-cuda", "tensorrt")
LOW_PRECISION_TARGETS = ("onnx", "ort-cpu", "ort-cuda", "tensorrt")
# (dtype, quant, calibrate)
PRECISIONS = (("fp16", "none", False), ("bf16", "none", False), ("fp32", "int8-uniform", False),
              ("fp32", "int4-uniform", False), ("fp32", "int4-uniform", True))
LOW_PRECISION_CONFIGS = ("gemma2", "gemma3")  # softcaps, rings, QK-norm, MQA between them


def cases(config_names: list[str]) -> list[tuple[str, str, str, str, bool]]:
    """(config, target, dtype, quant, calibrate), fp32 on every config and target, low precision
    on the configs that exercise the most switches."""
    out = [(c, t, "fp32", "none", False) for c in config_names for t in FP32_TARGETS]
    out += [(c, t, d, q, cal) for c in config_names if c in LOW_PRECISION_CONFIGS
            for t in LOW_PRECISION_TARGETS for d, q, cal in PRECISIONS]
    return out


def key(config: str, target: str, dtype: str, quant: str, calibrate: bool) -> str:
    return f"{config}/{target}/{dtype}/{quant}{'+calibrate' if calibrate else ''}"


def fingerprint(folder: Path) -> dict:
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    data_path = folder / "model.onnx.data"
    data = data_path.read_bytes() if data_path.is_file() else b""
    graph = proto.graph
    return {
        "ops": _ops(graph.node),
        "functions": {f"{f.domain}::{f.name}": _ops(f.node) for f in proto.functions},
        "inputs": {v.name: _type(v) for v in graph.input},
        "outputs": {v.name: _type(v) for v in graph.output},
        "initializers": {t.name: _tensor_hash(t, data) for t in graph.initializer},
    }


def _ops(nodes) -> dict[str, int]:
    return dict(sorted(Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in nodes).items()))


def _type(value: onnx.ValueInfoProto) -> str:
    t = value.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    return f"{onnx.TensorProto.DataType.Name(t.elem_type)}[{','.join(dims)}]"


def _tensor_hash(t: onnx.TensorProto, data: bytes) -> str:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        where = {e.key: e.value for e in t.external_data}
        offset, length = int(where.get("offset", 0)), int(where["length"])
        payload = data[offset:offset + length]
    else:
        payload = onnx.numpy_helper.to_array(t).tobytes()
    h = hashlib.sha256(f"{t.data_type}:{list(t.dims)}:".encode())
    h.update(payload)
    return h.hexdigest()


def export_case(checkpoint: Path, out: Path, target: str, dtype: str, quant: str, calibrate: bool) -> None:
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    export(checkpoint, out, ExportOptions(target=target, dtype=dtype, quant=quant, calibrate=calibrate,
                                          max_seq_len=MAX_SEQ_LEN))


def capture(checkpoints: dict[str, Path], work: Path) -> dict:
    result = {}
    for i, case in enumerate(cases(sorted(checkpoints))):
        out = work / f"case{i}"
        try:
            export_case(checkpoints[case[0]], out, *case[1:])
            result[key(*case)] = fingerprint(out)
        except Exception as e:  # a refusal is part of the behaviour too
            result[key(*case)] = {"refused": f"{type(e).__name__}: {e}"}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="capture and write the fixture")
    args = parser.parse_args()
    if not args.write:
        parser.error("nothing to do (pass --write to capture the fixture)")
    sys.path.insert(0, str(HERE))
    from tiny import CONFIGS, write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoints = {name: write_checkpoint(name, root / "ckpt" / name) for name in CONFIGS}
        fixture = capture(checkpoints, root / "out")
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}: {len(fixture)} cases")


if __name__ == "__main__":
    main()
