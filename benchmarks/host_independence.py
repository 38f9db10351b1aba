"""Host independence (issue 20): the same export made twice in fresh processes, once with this
host's kernels (AVX2 or AVX-512) and once with every library the export measures with held to its
SSE4.2 kernels (gemma_export.quantization.float64_reference.SSE42_KERNELS), must give the same recipe choices,
sensitivities, calibration scales and file bytes. Also each run's wall time and peak RSS (the
float64 measurement holds the model at 8 bytes a parameter).

Run: .venv/bin/python benchmarks/host_independence.py [--source PATH] [--quant int4 int8] [--calibrate]
     (no --source: the embedded Gemma 3 270M)
Writes benchmarks/results/host_independence.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_memory import RESULTS, WORK, gemma_export_command, timed  # noqa: E402

from gemma_export.quantization.float64_reference import SSE42_KERNELS  # noqa: E402

PROBE = "import torch; print(torch.backends.cpu.get_cpu_capability())"


def environment(held: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SSE42_KERNELS}
    return {**env, **SSE42_KERNELS} if held else env


def run(source: str | None, quant: str, calibrate: bool, held: bool) -> dict:
    env = environment(held)
    capability = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True).stdout.strip()
    out = WORK / "host-independence" / f"{quant}{'-cal' if calibrate else ''}-{'sse42' if held else 'host'}"
    cmd = [*gemma_export_command(), "export", *([source] if source else []), "-o", str(out), "--quant", quant,
           "--force", *(["--calibrate"] if calibrate else [])]
    result = timed(cmd, env)
    if result["exit"] != 0:
        raise SystemExit(f"export failed: {result['error']}")
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["report"]
    return {"kernels": capability, "wall_s": result["wall_s"], "peak_rss_mib": result["peak_rss_mib"],
            "files": {name: f["sha256"] for name, f in manifest["files"].items()},
            "quantization": report["quantization"], "calibration": report.get("calibration")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a checkpoint (default: the embedded Gemma 3 270M)")
    parser.add_argument("--quant", nargs="+", default=["int4"], choices=["int4", "int8", "source"])
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    rows = []
    for quant in args.quant:
        host, held = (run(args.source, quant, args.calibrate, h) for h in (False, True))
        kl_host, kl_held = host["quantization"]["sensitivity"]["kl"], held["quantization"]["sensitivity"]["kl"]
        rows.append({"quant": quant, "calibrate": args.calibrate, "host": host, "sse42": held,
                     "same_files": host["files"] == held["files"],
                     "same_choices": host["quantization"]["choices"] == held["quantization"]["choices"],
                     "same_sensitivities": kl_host == kl_held,
                     "same_scales": host["calibration"] == held["calibration"],
                     "units": len(kl_host)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "host_independence.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'recipe':<14} {'kernels':<16} {'units':>5} {'choices':>8} {'KLs':>5} {'scales':>6} {'bytes':>5} "
          f"{'export s':>9} {'peak MiB':>9}")
    for r in rows:
        for side in ("host", "sse42"):
            run_ = r[side]
            name = r["quant"] + (" +cal" if r["calibrate"] else "")
            same = [("same" if r[k] else "DIFF") if side == "sse42" else "" for k in
                    ("same_choices", "same_sensitivities", "same_scales", "same_files")]
            print(f"{name:<14} {run_['kernels']:<16} {r['units']:>5} {same[0]:>8} {same[1]:>5} {same[2]:>6} "
                  f"{same[3]:>5} {run_['wall_s']:>9.0f} {run_['peak_rss_mib']:>9.0f}")


if __name__ == "__main__":
    main()
