"""Export memory (issue 2): peak RSS and wall time of `gemma-export export` on a Gemma-2B-shaped
random checkpoint (bf16 safetensors, about 2 GB for 4 layers) exported to fp32, as `/usr/bin/time -v`
reports them, for every target that exists; and whether the peak grows with the number of layers.

Run: .venv/bin/python benchmarks/export_memory.py [--layers 2 4] [--targets generic ort-cpu onnx]
Writes benchmarks/results/export_memory.json. Target: under 1.5 GB, flat in the number of layers.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint import gemma_2b_checkpoint  # noqa: E402

from gemma_export.targets import TARGETS as ALL_TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench"
RESULTS = ROOT / "benchmarks" / "results"
TIME = Path("/usr/bin/time")
BUDGET_BYTES = 1.5e9
TARGETS = ("generic", "ort-cpu", "onnx")
GROWTH_TOLERANCE_MIB = 64  # allocator noise between runs; a retained layer would be ~440 MB


def gemma_export_command() -> list[str]:
    script = Path(sys.executable).parent / "gemma-export"
    if script.is_file():
        return [str(script)]
    found = shutil.which("gemma-export")
    if found is None:
        sys.exit("error: the gemma-export command is not installed (pip install -e . in this venv)")
    return [found]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Runs cmd under /usr/bin/time -v (in env, or this process's); wall seconds, peak RSS (MiB) and
    exit status."""
    proc = subprocess.run([str(TIME), "-v", *cmd], capture_output=True, text=True, env=env)
    report = proc.stderr
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", report)
    if rss is None or wall is None:
        raise RuntimeError(f"no /usr/bin/time report from {cmd[0]}: {report[-500:]}")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    errors = [l for l in report.splitlines() if l.startswith("error")]
    return {"wall_s": seconds, "peak_rss_mib": int(rss.group(1)) / 1024, "exit": proc.returncode,
            "error": errors[-1] if errors else (None if proc.returncode == 0 else report[-300:])}


def export_run(checkpoint: Path, target: str, layers: int) -> dict:
    out = WORK / "export-memory" / f"{target}-{layers}l"
    result = timed([*gemma_export_command(), "export", str(checkpoint), "-o", str(out), "--target", target,
                    "--force"])
    size = sum(f.stat().st_size for f in out.iterdir()) if out.is_dir() else 0
    shutil.rmtree(out, ignore_errors=True)
    return {"target": target, "layers": layers, **result, "artifact_mib": size / 2**20,
            "under_budget": result["exit"] == 0 and result["peak_rss_mib"] * 2**20 < BUDGET_BYTES}


def growth(runs: list[dict]) -> list[dict]:
    """Per target: peak RSS at the most layers minus at the fewest."""
    out = []
    for target in dict.fromkeys(r["target"] for r in runs):
        ok = sorted((r for r in runs if r["target"] == target and r["exit"] == 0), key=lambda r: r["layers"])
        if len(ok) < 2:
            continue
        delta = ok[-1]["peak_rss_mib"] - ok[0]["peak_rss_mib"]
        out.append({"target": target, "layers": [ok[0]["layers"], ok[-1]["layers"]], "delta_mib": delta,
                    "flat": delta < GROWTH_TOLERANCE_MIB})
    return out


def table(runs: list[dict]) -> str:
    lines = [f"{'target':<9} {'layers':>6} {'wall s':>7} {'peak RSS MiB':>12} {'peak GB':>7} {'artifact MiB':>12}  "
             f"< 1.5 GB"]
    for r in runs:
        status = "yes" if r["under_budget"] else ("NO" if r["exit"] == 0 else f"failed: {r['error']}")
        lines.append(f"{r['target']:<9} {r['layers']:>6} {r['wall_s']:>7.1f} {r['peak_rss_mib']:>12.0f} "
                     f"{r['peak_rss_mib'] * 2**20 / 1e9:>7.2f} {r['artifact_mib']:>12.0f}  {status}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4], help="layer counts to export")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(ALL_TARGETS))
    args = parser.parse_args()
    if not TIME.is_file():
        sys.exit(f"error: {TIME} not found; it reports the peak RSS (apt-get install -y time)")
    targets = args.targets
    runs = []
    for layers in sorted(set(args.layers), reverse=True):
        checkpoint = gemma_2b_checkpoint(WORK / f"gemma-2b-{layers}l", layers)
        for target in targets:
            print(f"exporting {layers} layers to {target} ...", flush=True)
            runs.append(export_run(checkpoint, target, layers))
    print(table(runs))
    flat = growth(runs)
    for g in flat:
        print(f"{g['target']}: peak RSS {g['layers'][0]} -> {g['layers'][1]} layers: {g['delta_mib']:+.0f} MiB "
              f"({'flat' if g['flat'] else 'GROWS with the layers'})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "export_memory.json"
    path.write_text(json.dumps({"budget_bytes": BUDGET_BYTES, "runs": runs, "growth": flat}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
