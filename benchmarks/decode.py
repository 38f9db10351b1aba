"""Generation speed side by side (issue 4): prefill tokens/s (128-token prompt), time to first token,
decode tokens/s (128 new tokens), peak RSS, for our exports (every target among generic, ort-cpu,
onnx that exists), transformers eager, and onnxruntime-genai's builder output (-p fp32 -e cpu) with
its default session settings and with intra-op threads = the core count; on (a) a Gemma-2B-shaped
4-layer random checkpoint and (b) the real Gemma 3 270M (an fp32 HF folder made from the embedded
GGUF by transformers' GGUF loader, which every engine reads).

Every engine runs in its own process and is timed by the same loop (gemma_export.bench): batch 1,
greedy, exactly 128 new tokens, best of 3 after a warm-up. The peers run in .bench-venv (created
here when missing). The decode bound is read bandwidth / bytes of weights per token (see
weight_bytes_per_token and read_bandwidth).

Run: .venv/bin/python benchmarks/decode.py [--models 2b-4l gemma3-270m] [--repeats 3] [--reuse]
Writes benchmarks/results/decode.json and prints a table per model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint import gemma_2b_checkpoint  # noqa: E402
from export_memory import gemma_export_command, timed  # noqa: E402

from gemma_export.bench import format_table, measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench"
RESULTS = ROOT / "benchmarks" / "results"
PEERS = Path(__file__).resolve().parent / "peers.py"
BENCH_VENV = ROOT / ".bench-venv"
# torch first, pinned (an unpinned torch pulls another build); then what the genai builder imports
PEER_INSTALL = [["torch==2.13.0"],
                ["onnxruntime-genai==0.18.0", "onnx-ir", "onnxscript", "transformers>=5,<6", "numpy"]]
TARGETS = ("generic", "ort-cpu", "onnx")
MODELS = ("2b-4l", "gemma3-270m")
GiB = 2**30


# -- environment ------------------------------------------------------------------------------
def bench_python() -> Path:
    """.bench-venv's python, creating the environment when it is missing or incomplete."""
    python = BENCH_VENV / "bin" / "python"
    check = [str(python), "-c", "import torch, transformers, onnxruntime_genai, onnx_ir, onnxscript"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"setting up {BENCH_VENV} (torch, onnxruntime-genai, transformers) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    for packages in PEER_INSTALL:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    subprocess.run(check, check=True)
    return python


def peer(python: Path | str, *args: str) -> dict:
    """One peers.py subcommand under `python`; its JSON line, or {"error": ...}."""
    proc = subprocess.run([str(python), str(PEERS), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()] or ["no output"]
        return {"error": lines[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the bound --------------------------------------------------------------------------------
def read_bandwidth(repeats: int = 5) -> dict:
    """Bytes/s of summing a 1 GiB fp32 array with every core, best of `repeats`, two ways: numpy
    on one thread per core (numpy releases the GIL while summing), and onnxruntime's ReduceSum over
    rows with intra-op threads = cores. The bound uses the faster: it must be an upper bound."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    cores = os.cpu_count() or 1
    a = np.ones((16384, 16384), np.float32)  # 1 GiB, touched (in memory) before timing

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return a.nbytes / min(times)

    chunks = np.array_split(a.reshape(-1), cores * 16)  # small chunks: the threads finish together
    with ThreadPoolExecutor(cores) as pool:
        numpy_bw = best(lambda: sum(pool.map(np.sum, chunks)))
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    options = ort.SessionOptions()
    options.intra_op_num_threads = cores
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    ort_bw = best(lambda: session.run(None, {"x": a}))
    return {"cores": cores, "numpy_threads_gb_s": numpy_bw / 1e9, "ort_reducesum_gb_s": ort_bw / 1e9,
            "bound_gb_s": max(numpy_bw, ort_bw) / 1e9}


def weight_bytes_per_token(config: dict, bytes_per_value: int = 4) -> int:
    """Bytes of weights one decode step must read at least (fp32): every layer matrix (q, k, v,
    o, gate, up, down) and norm, the final norm, and the tied embedding table once, whole: the
    lm_head reads all of it, and the lookup's one row is among those bytes. The KV cache
    (under 0.1% of this for 256 positions with one KV head) is left out. Equal to the size of a
    straight fp32 export's weights with the tied table stored once. `config` is a manifest's."""
    h, f, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_heads"] * d, config["num_kv_heads"] * d
    matrices = 2 * h * q + 2 * h * kv + 3 * h * f
    norms = (2 if config["family"] == "gemma" else 4) * h + (2 * d if config["family"] == "gemma3" else 0)
    return (config["num_layers"] * (matrices + norms) + h + config["vocab_size"] * h) * bytes_per_value


# -- one model --------------------------------------------------------------------------------
def source_folder(model: str) -> Path:
    if model == "2b-4l":
        return gemma_2b_checkpoint(WORK / "gemma-2b-4l", layers=4)
    folder = WORK / "gemma3-270m-hf"
    if not (folder / "config.json").is_file():
        from gemma_export.checkpoints.default_model import default_gguf_path

        result = peer(sys.executable, "hf-from-gguf", str(default_gguf_path()), str(folder))
        if "error" in result:
            sys.exit(f"error: cannot make the Gemma 3 270M HF folder: {result['error']}")
    return folder


def our_rows(model: str, source: Path, targets: list[str], args) -> list[dict]:
    rows = []
    for target in targets:
        out = WORK / "decode" / model / target
        built = {}
        if not (args.reuse and (out / "manifest.json").is_file()):
            print(f"  export {target} ...", flush=True)
            built = timed([*gemma_export_command(), "export", str(source), "-o", str(out), "--target", target,
                           "--force"])
            if built["exit"] != 0:
                rows.append({"name": f"ours {target}", "error": built["error"]})
                continue
        print(f"  bench {target} ...", flush=True)
        try:
            result = measure(out, args.prompt_tokens, args.new_tokens, repeats=args.repeats)
        except Exception as e:  # one engine failing must not lose the others' figures
            result = {"error": str(e)}
        rows.append({"name": f"ours {target}", **result, "build_s": built.get("wall_s"),
                     "build_rss_mib": built.get("peak_rss_mib")})
    return rows


def peer_rows(model: str, source: Path, python: Path, args) -> list[dict]:
    common = ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
              "--repeats", str(args.repeats)]
    print("  bench transformers eager ...", flush=True)
    rows = [{"name": "transformers eager", **peer(python, "run-hf", str(source), *common)}]
    genai = WORK / "decode" / model / "genai"
    built = {}
    if not (args.reuse and (genai / "genai_config.json").is_file()):
        print("  build onnxruntime-genai ...", flush=True)
        shutil.rmtree(genai, ignore_errors=True)
        built = timed([str(python), str(PEERS), "build-genai", str(source), str(genai)])
        if built["exit"] != 0:
            return rows + [{"name": "onnxruntime-genai", "error": built["error"]}]
    for threads, label in ((None, "default threads"), (os.cpu_count() or 1, "threads = cores")):
        print(f"  bench onnxruntime-genai, {label} ...", flush=True)
        extra = ["--threads", str(threads)] if threads else []
        rows.append({"name": f"onnxruntime-genai, {label}", **peer(python, "run-genai", str(genai), *common, *extra),
                     "build_s": built.get("wall_s"), "build_rss_mib": built.get("peak_rss_mib")})
    return rows


def add_ratios(rows: list[dict], bound_tokens_per_s: float) -> None:
    """Decode as a fraction of the bound; our rows against onnxruntime-genai's best setting; and
    how many leading greedy tokens each engine shares with transformers (a cross-check: fp32 engines
    agree until a near-tie, which on a random prompt may come early or never)."""
    ok = [r for r in rows if "error" not in r]
    genai = [r for r in ok if r["name"].startswith("onnxruntime-genai")]
    hf = next((r for r in ok if r["name"] == "transformers eager"), None)
    for r in ok:
        r["decode_fraction_of_bound"] = r["decode_tokens_per_s"] / bound_tokens_per_s
        if hf is not None:
            same = [a == b for a, b in zip(r["generated"], hf["generated"])] + [False]
            r["tokens_agreeing_with_hf"] = same.index(False)
        if genai and r["name"].startswith("ours"):
            r["decode_vs_genai_best"] = r["decode_tokens_per_s"] / max(g["decode_tokens_per_s"] for g in genai)
            r["prefill_vs_genai_best"] = r["prefill_tokens_per_s"] / max(g["prefill_tokens_per_s"] for g in genai)


COLUMNS = [
    ("prefill tok/s", "prefill_tokens_per_s", "{:.1f}"),
    ("TTFT ms", "ttft_ms", "{:.0f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:.2f}"),
    ("of bound", "decode_fraction_of_bound", "{:.0%}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
    ("decode/genai", "decode_vs_genai_best", "{:.2f}x"),
    ("prefill/genai", "prefill_vs_genai_best", "{:.2f}x"),
    ("tokens = HF", "tokens_agreeing_with_hf", "{}"),
    ("build s", "build_s", "{:.0f}"),
    ("build RSS MiB", "build_rss_mib", "{:.0f}"),
]


def model_table(model: str, entry: dict, bandwidth: dict, targets: list[str]) -> str:
    """Adds the bound and the ratios to entry (from an export's normalized config); its table."""
    rows = entry["rows"]
    manifests = [WORK / "decode" / model / t / "manifest.json" for t in targets]
    manifest = next((json.loads(m.read_text()) for m in manifests if m.is_file()), None)
    if manifest is None:
        head = f"{model}: no export to read the config from"
    else:
        per_token = weight_bytes_per_token(manifest["config"])
        bound = bandwidth["bound_gb_s"] * 1e9 / per_token
        add_ratios(rows, bound)
        entry.update({"weight_bytes_per_token": per_token, "bound_decode_tokens_per_s": bound})
        head = (f"{model}: {per_token / 1e9:.2f} GB of weights per token; decode bound {bound:.2f} tok/s "
                f"at {bandwidth['bound_gb_s']:.1f} GB/s")
    errors = [f"  {r['name']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join([head, format_table(rows, COLUMNS), *errors])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="our exports only")
    parser.add_argument("--reuse", action="store_true", help="reuse exports and peer builds already made")
    args = parser.parse_args()
    if not Path("/usr/bin/time").is_file():
        sys.exit("error: /usr/bin/time not found; it reports build time and peak RSS (apt-get install -y time)")
    python = None if args.no_peers else bench_python()
    targets = args.targets
    print("measuring read bandwidth ...", flush=True)
    bandwidth = read_bandwidth()
    _print_bandwidth(bandwidth)
    report = {"machine": bandwidth, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "repeats": args.repeats, "models": {}}
    for model in args.models:
        print(f"{model}:", flush=True)
        source = source_folder(model)
        rows = our_rows(model, source, targets, args)
        if python is not None:
            rows += peer_rows(model, source, python, args)
        report["models"][model] = {"source": str(source), "rows": rows}
        print(format_table(rows), flush=True)
    # Other work on a shared machine only ever lowers a reading: measure again and keep the best
    print("measuring read bandwidth again ...", flush=True)
    again = read_bandwidth()
    bandwidth.update({k: max(v, again[k]) for k, v in bandwidth.items()})
    _print_bandwidth(bandwidth)
    tables = [model_table(model, entry, bandwidth, targets) for model, entry in report["models"].items()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "decode.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print("\n\n".join(tables))
    print(f"wrote {path}")


def _print_bandwidth(bandwidth: dict) -> None:
    print(f"read bandwidth: numpy threads {bandwidth['numpy_threads_gb_s']:.1f} GB/s, onnxruntime ReduceSum "
          f"{bandwidth['ort_reducesum_gb_s']:.1f} GB/s ({bandwidth['cores']} cores)")


if __name__ == "__main__":
    main()
