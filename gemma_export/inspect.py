"""A readable summary of an artifact: what it is, its IO, its passes, its ops and sizes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from gemma_runtime.artifact import MODEL_FILE, read_manifest


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node)


def describe(folder: Path | str) -> str:
    folder = Path(folder)
    manifest = read_manifest(folder)
    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    cfg = manifest["config"]
    lines = [
        f"{folder}: {manifest['family']} ({cfg['num_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_heads']} heads / {cfg['num_kv_heads']} KV heads, head_dim {cfg['head_dim']}, vocab {cfg['vocab_size']})",
        f"target {manifest['target']}, dtype {manifest['dtype']}, quant {manifest['quant']['method']}, "
        f"KV cache {manifest['kv_cache']['layout']} (max {manifest['kv_cache']['max_seq_len']}, {manifest['kv_cache']['dtype']})",
        "", "inputs:"]
    io = [(k, v) for k, v in manifest["inputs"].items() if not k.startswith("past_")]
    lines += [f"  {k:<16} {v['dtype']} {v['shape']}" for k, v in io]
    past = [k for k in manifest["inputs"] if k.startswith("past_")]
    if past:
        v = manifest["inputs"][past[0]]
        lines.append(f"  {len(past)} cache inputs like {past[0]}: {v['dtype']} {v['shape']}")
    rings = manifest["kv_cache"].get("window_layers", {})
    if rings:
        sizes = sorted(set(rings.values()))
        lines.append(f"  layers {', '.join(rings)}: window-sized ring caches ({', '.join(map(str, sizes))} slots)")
    lines += ["outputs:"] + [f"  {k:<16} {v['dtype']} {v['shape']}" for k, v in manifest["outputs"].items()
                             if not k.startswith("present_")]
    lines += ["", "passes:"] + [f"  {p['name']:<28} {p['rewrites']} rewrites" for p in manifest["passes"]]
    lines += low_precision(manifest)
    lines += ["", f"ops ({len(model.graph.node)} nodes):"]
    lines += [f"  {op:<40} {n}" for op, n in sorted(op_counts(model).items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", "files:"]
    for f in sorted(folder.iterdir()):
        lines.append(f"  {f.name:<28} {f.stat().st_size / 2**20:10.2f} MiB")
    return "\n".join(lines)


def low_precision(manifest: dict) -> list[str]:
    """What the precision and calibration passes did (their reports in the manifest)."""
    report, quant = manifest.get("report", {}), manifest["quant"]
    lines = []
    if quant["method"] != "none":
        lines.append(f"quantization: {quant['method']}, blocks of {quant['block_size']}"
                     + (", calibrated" if quant["calibrated"] else "")
                     + ("" if quant["embeddings_quantized"] else ", embedding kept in floating point"))
    if "calibration" in report:
        c = report["calibration"]
        chosen = Counter(c["alpha"].values())
        lines.append(f"calibration: {c['method']} over {c['tokens']} tokens, {sum(chosen.values())} products; "
                     f"scales chosen: {', '.join(f'{k} x{n}' for k, n in chosen.most_common())}")
    if "precision" in report:
        p = report["precision"]
        lines.append(f"precision: {p['dtype']} storage, {p['compute']} compute, {p['casts']} casts; "
                     f"fp32 by rule: {', '.join(p['fp32_by_rule'])}")
        kept = p["kept_fp32"]
        if kept:
            lines.append(f"  kept in fp32 (calibrated |x| > {p['fp16_limit']:g}): {len(kept)} tensors, "
                         f"largest |x| {max(kept.values()):.4g}")
            lines += [f"    {name:<40} {m:.4g}" for name, m in kept.items()]
    return ["", *lines] if lines else []
