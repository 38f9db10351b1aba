"""A readable summary of an artifact: what it is, its IO, its passes, its ops and sizes; and its
files checked against the sizes and sha256 the manifest records."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import onnx

from gemma_export.errors import GemmaExportError
from gemma_runtime.manifest import FileDigest, Manifest, read_manifest

HASH_CHUNK_BYTES = 16 * 2**20


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node)


def describe(folder: Path | str) -> str:
    folder = Path(folder)
    manifest = read_manifest(folder)
    embedding = manifest.embedding
    main = manifest.embedder if embedding else manifest.decoder
    model = onnx.load(str(folder / main.file), load_external_data=False)
    cfg, kv = manifest.config["text"] if embedding else manifest.config, manifest.kv_cache
    caches = {name for b in kv.buffers for name in (b.input_name, b.output_name)}
    kind = " embedding model," if embedding else ""
    lines = [
        f"{folder}: {manifest.family}{kind} ({cfg['num_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_heads']} heads / {cfg['num_kv_heads']} KV heads, head_dim {cfg['head_dim']}, vocab {cfg['vocab_size']})",
        f"target {manifest.target} (backends {', '.join(manifest.execution.backends)}; devices "
        f"{', '.join(manifest.execution.devices)}), dtype {manifest.dtype}, quant {manifest.quant['method']}",
        "", "graphs:", *(f"  {name:<16} {g.role:<16} {g.file}" + (f" + {g.data_file}" if g.data_file else "")
                         for name, g in manifest.graphs.items()),
        "", f"{main.role} inputs:"]
    lines += [f"  {k:<16} {v.dtype} {list(v.shape)}" for k, v in main.inputs.items() if k not in caches]
    lines += [f"{main.role} outputs:"] + [f"  {k:<16} {v.dtype} {list(v.shape)}" for k, v in main.outputs.items()
                                          if k not in caches]
    if embedding:
        lines += ["", f"embedding: {embedding.dimensions} dimensions, inputs up to {kv.max_seq_len} tokens, framed "
                  f"{list(embedding.prefix_ids)} ... {list(embedding.suffix_ids)}; prompts: "
                  f"{', '.join(embedding.prompts) or 'none'} (default {embedding.default_prompt_name})"]
    else:
        cache = f"KV cache ({kv.update}, max {kv.max_seq_len} positions): {len(kv.buffers)} buffers"
        if kv.update == "inplace":
            cache += f", {sum(b.nbytes(1) for b in kv.buffers) / 2**20:.2f} MiB per sequence"
        lines += ["", cache, *cache_lines(kv.buffers)]
    lines += ["", "passes:"] + [f"  {p['name']:<28} {p['rewrites']} rewrites" for p in manifest.passes]
    attention = manifest.report.get("attention")
    if attention and attention["unfused"]:
        lines += [f"attention: {attention['GroupQueryAttention']} layers fused (GroupQueryAttention); "
                  "layers left unfused (standard Attention over the in-place cache):"]
        lines += [f"  layer {layer}: {reason}" for layer, reason in attention["unfused"].items()]
    lines += low_precision(manifest)
    lines += ["", f"ops ({len(model.graph.node)} nodes):"]
    lines += [f"  {op:<40} {n}" for op, n in sorted(op_counts(model).items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", "files:"]
    for f in sorted(folder.iterdir()):
        lines.append(f"  {f.name:<28} {f.stat().st_size / 2**20:10.2f} MiB")
    return "\n".join(lines)


def cache_lines(buffers) -> list[str]:
    """Buffers grouped by what they look like: layout, shape, dtype, and who writes and reads them."""
    groups: dict[tuple, list] = {}
    for b in buffers:
        shared = "" if b.read_by == b.written_by else f", read by layers {', '.join(map(str, b.read_by))}"
        groups.setdefault((b.layout, b.shape, b.dtype, shared), []).append(b)
    lines = []
    for (layout, shape, dtype, shared), members in groups.items():
        ring = f" of {shape[2]} slots" if layout == "ring" else ""
        lines.append(f"  {len(members):>3} x {layout}{ring} {dtype} {list(shape)}: "
                     f"{', '.join(b.name for b in members[:4])}{' ...' if len(members) > 4 else ''}{shared}")
    return lines


def quantization(q: dict) -> list[str]:
    """The recipe's choice per weight, with the measured sensitivities and sizes behind it."""
    widths = Counter(q["choices"].values())
    lines = [f"recipe {q['recipe']}: " + ", ".join(f"{n} x {w}" for w, n in sorted(widths.items()))]
    if "budget_mib" in q:
        streamed = f", {q['estimated_streamed_mib']} MiB streamed per step" if "estimated_streamed_mib" in q else ""
        lines.append(f"  budget {q['budget_mib']} MiB (fp32 {q['fp32_mib']} MiB, all at the narrowest width "
                     f"{q['all_narrowest_mib']} MiB), estimated {q['estimated_mib']} MiB in files{streamed}; "
                     f"sensitivity: {q['sensitivity']['measure']} over {q['sensitivity']['tokens']} tokens")
    kl = q.get("sensitivity", {}).get("kl", {})
    types = q.get("source_types", {})
    for name, width in q["choices"].items():
        detail = "  ".join(f"KL {w} {v:.3g}" for w, v in kl.get(name, {}).items() if w != "float")
        source = f"  (source {types[name]})" if name in types else ""
        lines.append(f"    {name:<52} {width:<7}{detail}{source}")
    return lines


def low_precision(manifest: Manifest) -> list[str]:
    """What the precision and calibration passes did (their reports in the manifest)."""
    report, quant = manifest.report, manifest.quant
    lines = []
    if quant["method"] != "none":
        lines.append(f"quantization: {quant['method']}, blocks of {quant['block_size']}"
                     + (", calibrated" if quant["calibrated"] else "")
                     + ("" if quant["embeddings_quantized"] else ", embedding kept in floating point"))
    if "quantization" in report:
        lines += quantization(report["quantization"])
    if "candidates" in report.get("two_stage_lm_head", {}):
        t = report["two_stage_lm_head"]
        lines.append(f"lm_head: two stages, an int{t['scan']['bits']} scan (blocks of {t['scan']['block']}) and "
                     f"{t['candidates']} candidates re-scored from the {t['rows']} rows with fp32 activations; "
                     f"exact for {t['exact']}; the tail: {t['tail']}")
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


def verify(folder: Path | str) -> dict[str, str]:
    """Each file the manifest records, hashed again: name -> "OK", "MISSING" or "MISMATCH (...)"."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest.files:
        raise GemmaExportError(f"{folder}: its manifest records no file hashes (format_version "
                               f"{manifest.format_version}): export it again to have them")
    for name in manifest.files:
        if Path(name).name != name or name in ("", ".", ".."):
            raise GemmaExportError(f"{folder}: its manifest lists {name!r}, not a file of the artifact folder")
    return {name: _compare(folder / name, digest) for name, digest in manifest.files.items()}


def _compare(path: Path, recorded: FileDigest) -> str:
    if not path.is_file():
        return "MISSING"
    sha256, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            sha256.update(chunk)
            size += len(chunk)
    if size != recorded.size:
        return f"MISMATCH (size {size}, the manifest says {recorded.size})"
    if sha256.hexdigest() != recorded.sha256:
        return f"MISMATCH (sha256 {sha256.hexdigest()}, the manifest says {recorded.sha256})"
    return "OK"
