"""Gemma 4 shapes, measured in one run: an E2B-shaped checkpoint (its published widths, random bf16
weights, a few layers of which the last 2 share KV, the per-layer table at its full 262144 x
(layers x 256)) and a 26B-A4B-shaped mixture of experts (two layers, 128 experts each, top 8).

  E2B: export peak RSS at two layer counts (flat in layers?), the artifact's runtime peak RSS beside
       the per-layer table's size (mapped, not resident?), KV-cache bytes with and without sharing,
       prefill/decode tok/s against llama.cpp on a GGUF converted from the same folder.
  MoE: decode tok/s of the routed export against the same checkpoint with every expert computed
       (top_k = number of experts), which reads every expert's weights per token.

llama.cpp: pass --llama-python (a venv with llama-cpp-python built from source) and
--llama-convert (convert_hf_to_gguf.py from the llama.cpp sources in the llama-cpp-python source
package: pip download --no-binary :all: --no-deps llama-cpp-python); without them its rows are
left out. Each engine runs in its own process (gemma_export.bench.measure, benchmarks/peers.py).

Run: .venv/bin/python benchmarks/gemma4.py [--layers 5 7] [--threads 2] [--llama-python P --llama-convert C]
Writes benchmarks/results/gemma4.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint import write_safetensors_bf16  # noqa: E402

from gemma_export.bench import format_table, measure  # noqa: E402
from gemma_export.checkpoints.hf_config import parse_hf_config  # noqa: E402
from gemma_graphs.config import GemmaConfig  # noqa: E402
from gemma_graphs.gemma import parameter_shapes  # noqa: E402
from gemma_runtime.manifest import read_manifest  # noqa: E402

WORK = ROOT / ".cache" / "bench" / "gemma4"
RESULTS = ROOT / "benchmarks" / "results"
TIME = Path("/usr/bin/time")
MiB = 2**20
E2B = dict(vocab_size=262144, hidden_size=1536, intermediate_size=6144, num_attention_heads=8,
           num_key_value_heads=1, head_dim=256, global_head_dim=512, hidden_size_per_layer_input=256,
           vocab_size_per_layer_input=262144, use_double_wide_mlp=True, final_logit_softcapping=30.0,
           sliding_window=512, max_position_embeddings=131072, rms_norm_eps=1e-6)
# 26B-A4B's widths; a small vocabulary so that the experts, not the lm_head, dominate a step
MOE = dict(vocab_size=8192, hidden_size=2816, intermediate_size=2112, num_attention_heads=16,
           num_key_value_heads=8, head_dim=256, global_head_dim=512, num_global_key_value_heads=2,
           attention_k_eq_v=True, enable_moe_block=True, num_experts=128, top_k_experts=8,
           moe_intermediate_size=704, sliding_window=1024, final_logit_softcapping=30.0,
           hidden_size_per_layer_input=0, max_position_embeddings=131072, rms_norm_eps=1e-6)


def e2b_layer_types(layers: int) -> list[str]:
    """Sliding layers, one full layer before the 2 KV-shared ones (sliding, full), as E2B ends."""
    types = ["sliding_attention"] * (layers - 2) + ["sliding_attention", "full_attention"]
    types[layers - 3] = "full_attention"
    return types


def checkpoint(folder: Path, fields: dict) -> Path:
    """config.json written by transformers, random bf16 weights of our model's own shapes (norms
    around 1: Gemma 4 multiplies by them)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    cfg = transformers.Gemma4TextConfig(**fields)
    cfg.architectures = ["Gemma4ForCausalLM"]
    cfg.save_pretrained(folder)
    write_tokenizer(folder, fields["vocab_size"])
    shapes = parameter_shapes(parse_hf_config(json.loads((folder / "config.json").read_text())))
    write_safetensors_bf16(folder / "model.safetensors", shapes, norm_center=1.0)
    return folder


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A byte-fallback BPE tokenizer.json of the model's vocabulary size (special pieces, the 256
    bytes, then filler pieces): llama.cpp's converter reads one; our export ships it too."""
    if (folder / "tokenizer.json").is_file():
        return
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    vocab.update({piece: len(vocab) + i for i, piece in enumerate(("\u2581", "w", "\u2581w"))})
    vocab.update({f"\u2581w{i}": i for i in range(len(vocab), vocab_size)})
    merges = [("\u2581", "w")]  # llama.cpp refuses a BPE vocabulary without merges
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)


def export_rss(source: Path, out: Path, target: str = "ort-cpu", max_seq_len: int = 4096) -> dict:
    """`gemma-export export` in its own process under /usr/bin/time: peak RSS and wall time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(TIME), "-v", sys.executable, "-m", "gemma_export.cli", "export", str(source), "-o", str(out),
           "--target", target, "--max-seq-len", str(max_seq_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report = proc.stderr
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    wall = re.search(r"Elapsed \(wall clock\) time .*: ([\d:.]+)", report)
    if proc.returncode != 0 or rss is None:
        raise RuntimeError(f"export failed: {report[-800:]}")
    return {"export_peak_rss_mib": int(rss.group(1)) / 1024, "export_wall": wall.group(1),
            "artifact_mib": sum(f.stat().st_size for f in out.iterdir()) / MiB}


def kv_bytes(folder: Path) -> dict:
    """Cache bytes per sequence at the artifact's max_seq_len, as exported (shared) and as they
    would be with a cache per layer (what KV sharing saves)."""
    manifest = read_manifest(folder)
    cfg = GemmaConfig.from_dict(manifest.config)
    shared = sum(b.nbytes(1) for b in manifest.kv_cache.buffers)
    per_layer = 0
    for i in range(cfg.num_layers):
        source = next(b for b in manifest.kv_cache.buffers if b.kind == "key" and cfg.kv_source(i) in b.written_by)
        per_layer += 2 * source.nbytes(1)
    return {"kv_mib_shared": shared / MiB, "kv_mib_per_layer": per_layer / MiB,
            "kv_saved": 1 - shared / per_layer}


def llama_row(python: str, convert: str, source: Path, gguf: Path, args) -> dict:
    write_tokenizer(source, json.loads((source / "config.json").read_text())["vocab_size"])
    if not gguf.is_file():
        subprocess.run([python, convert, str(source), "--outfile", str(gguf), "--outtype", "f32"], check=True,
                       capture_output=True)
    out = subprocess.run([python, str(ROOT / "benchmarks" / "peers.py"), "run-llama", str(gguf),
                          "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                          "--repeats", str(args.repeats), "--threads", str(args.threads)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"name": "llama.cpp f32", "error": out.stderr.strip().splitlines()[-1]}
    return {"name": "llama.cpp f32", **json.loads(out.stdout.strip().splitlines()[-1])}


def e2b(args) -> dict:
    report: dict = {"e2b": []}
    for layers in sorted(args.layers):
        fields = dict(E2B, num_hidden_layers=layers, layer_types=e2b_layer_types(layers), num_kv_shared_layers=2)
        source = checkpoint(WORK / f"e2b-{layers}l", fields)
        out = WORK / f"e2b-{layers}l-ort-cpu"
        row = {"layers": layers, **export_rss(source, out), **kv_bytes(out)}
        row["per_layer_table_mib"] = fields["vocab_size"] * layers * 256 * 4 / MiB
        report["e2b"].append(row)
        print(json.dumps(row), flush=True)
    largest = max(args.layers)
    source, out = WORK / f"e2b-{largest}l", WORK / f"e2b-{largest}l-ort-cpu"
    speed_rows = [{"name": f"ours ort-cpu fp32 ({largest} layers)",
                   **measure(out, args.prompt_tokens, args.new_tokens, args.threads, repeats=args.repeats)}]
    if args.llama_python and args.llama_convert:
        gguf = WORK / f"e2b-{largest}l.f32.gguf"
        speed_rows.append(llama_row(args.llama_python, args.llama_convert, source, gguf, args))
    report["e2b_speed"] = speed_rows
    print(format_table(speed_rows), flush=True)
    return report


def moe(args) -> list[dict]:
    """Decode after a one-token prompt: the every-expert export gathers all 128 experts' weights per
    prompt token, which for a longer prompt does not fit in memory (see the README)."""
    # two layers, one of each type, as every Gemma 4 has
    source = checkpoint(WORK / "moe", dict(MOE, num_hidden_layers=2, layer_types=["sliding_attention",
                                                                                  "full_attention"]))
    every = WORK / "moe-every-expert"
    if not (every / "model.safetensors").is_file():
        shutil.rmtree(every, ignore_errors=True)
        shutil.copytree(source, every)
        config = json.loads((every / "config.json").read_text())
        (every / "config.json").write_text(json.dumps({**config, "top_k_experts": MOE["num_experts"]}))
    rows = []
    for name, folder in (("routed, top 8 of 128", source), ("every expert (top 128)", every)):
        artifact = WORK / f"{folder.name}-ort-cpu"
        if not (artifact / "manifest.json").is_file():
            export_rss(folder, artifact, max_seq_len=256)
        rows.append({"name": name, **measure(artifact, 1, args.new_tokens // 2, args.threads, repeats=args.repeats)})
        print(format_table(rows[-1:]), flush=True)
    print(format_table(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["e2b", "moe"], choices=["e2b", "moe"])
    parser.add_argument("--layers", type=int, nargs="+", default=[5, 7])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--llama-python")
    parser.add_argument("--llama-convert")
    args = parser.parse_args()
    report: dict = {}
    if "e2b" in args.parts:
        report.update(e2b(args))
    if "moe" in args.parts:
        report["moe"] = moe(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gemma4-{'-'.join(args.parts)}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")

if __name__ == "__main__":
    main()
