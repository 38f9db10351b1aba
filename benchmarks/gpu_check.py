"""Prepare the GPU check of ort-cuda: everything a lent GPU machine needs, cut to fit its transfers.

That machine has torch with CUDA 13 but no onnxruntime-gpu, no exporter and no network, and one call
carries at most 64 MiB. So, here:

    python benchmarks/gpu_check.py prepare [--python 3.12] [--no-speed] [--out .gpu_check]

downloads onnxruntime-gpu 1.31.1 (its CUDA provider links CUDA 13) for that machine's Python and
cuts it into pieces of at most 60 MiB (sha256 of the whole recorded), exports the tiny Gemma 1-4
configs to ort-cuda fp16 and bf16 with their fp32 transformers references, and (unless --no-speed)
the real Gemma 3 270M fp16 and int4 and a Gemma-2B-shaped random checkpoint fp16 for timing, those
three without their weight files (recreated there as zeros of their size). Then, with the device
tool, back to back (the machine keeps its files for 30 s after a call), one call per piece:

    carry [".gpu_check/pieces/00"]   bash benchmarks/gpu_check.sh piece 00   (also: Python, GPU, numpy)
    ...                                one call per piece
    carry [".gpu_check/plan"]        bash benchmarks/gpu_check.sh run

`run` joins the pieces, checks the sha256, installs the wheel with --no-deps --target first on
PYTHONPATH (the machine's image has the CPU onnxruntime), and runs benchmarks/gpu_check_device.py:
parity and speed tables printed, $OUT/gpu_check.json written. The runtime refuses a session that
fell back to the CPU, so every number is the CUDA provider's."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))
sys.path.append(str(ROOT / "benchmarks"))

ONNXRUNTIME_GPU = "1.31.1"
PIECE_BYTES = 60 * 2**20  # a call carries 64 MiB
PROMPTS = {"whole": 40, "stepwise": 30, "prefill": 5}
SPEED_SETTINGS = {"prompt_tokens": 512, "new_tokens": 64, "batch": 16}
SPEED_MAX_SEQ_LEN = 1024
GEMMA_2B_LAYERS = 18  # Gemma 1 2B's depth


def split(path: Path, folder: Path, piece_bytes: int = PIECE_BYTES) -> list[str]:
    """path cut into folder/00, 01, ... of at most piece_bytes each; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    with open(path, "rb") as f:
        while chunk := f.read(piece_bytes):
            names.append(f"{len(names):02d}")
            (folder / names[-1]).write_bytes(chunk)
    return names


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(python: str, folder: Path) -> Path:
    tag = python.replace(".", "")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux_2_27_x86_64", "-d", str(folder), f"onnxruntime-gpu=={ONNXRUNTIME_GPU}"], check=True)
    wheels = sorted(folder.glob(f"onnxruntime_gpu-{ONNXRUNTIME_GPU}-cp{tag}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip found no onnxruntime-gpu {ONNXRUNTIME_GPU} wheel for Python {python}")
    return wheels[0]


def parity_entries(plan_dir: Path, names: list[str], dtypes: list[str]) -> list[dict]:
    """Tiny configs exported to ort-cuda per dtype, with fp32 transformers references."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions
    from parity import hf_logits
    from tiny import hf_model, write_checkpoint

    prompts = plan_prompts()
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            checkpoint = write_checkpoint(name, Path(tmp) / name)
            hf = hf_model(name)
            reference = f"references/{name}.npz"
            (plan_dir / "references").mkdir(parents=True, exist_ok=True)
            np.savez(plan_dir / reference, whole=hf_logits(hf, prompts["whole"]),
                     stepwise=hf_logits(hf, prompts["stepwise"])[prompts["prefill"] - 1:])
            for dtype in dtypes:
                artifact = f"parity/{name}-{dtype}"
                export(checkpoint, plan_dir / artifact, ExportOptions(target="ort-cuda", dtype=dtype, max_seq_len=64))
                entries.append({"name": f"{name} {dtype}", "artifact": artifact, "reference": reference})
            print(f"parity: {name} exported ({', '.join(dtypes)})", flush=True)
    return entries


def plan_prompts() -> dict:
    from parity import prompt

    return {"whole": prompt(1, PROMPTS["whole"]), "stepwise": prompt(2, PROMPTS["stepwise"]),
            "prefill": PROMPTS["prefill"]}


def speed_entry(plan_dir: Path, name: str, source: Path | None, **options) -> dict:
    """An ort-cuda export whose weight files stay here: their sizes travel instead."""
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    artifact = plan_dir / "speed" / name
    export(source, artifact, ExportOptions(target="ort-cuda", max_seq_len=SPEED_MAX_SEQ_LEN, **options))
    manifest = json.loads((artifact / "manifest.json").read_text())
    data = {f: d["size"] for f, d in manifest["files"].items() if f.endswith(".data")}
    for file in data:
        (artifact / file).unlink()
    print(f"speed: {name} exported ({sum(data.values()) / 2**20:.0f} MiB of weights stay here)", flush=True)
    return {"name": name, "artifact": f"speed/{name}", "zero_files": data}


def prepare(args: argparse.Namespace) -> None:
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    plan_dir = out / "plan"
    plan_dir.mkdir(parents=True)
    wheel = download_wheel(args.python, out / "wheel")
    pieces = split(wheel, out / "pieces")
    from tiny import CONFIGS, GEMMA4_CONFIGS

    plan = {"onnxruntime": ONNXRUNTIME_GPU, "wheel": wheel.name, "wheel_sha256": sha256(wheel), "pieces": pieces,
            "python": args.python, "prompt": plan_prompts(), "speed_settings": SPEED_SETTINGS,
            "parity": parity_entries(plan_dir, [*CONFIGS, *GEMMA4_CONFIGS], ["fp16", "bf16"]), "speed": []}
    if args.speed:
        from checkpoint import gemma_2b_checkpoint

        plan["speed"] = [speed_entry(plan_dir, "gemma3-270m-fp16", None, dtype="fp16"),
                         speed_entry(plan_dir, "gemma3-270m-int4", None, dtype="fp16", quant="int4"),
                         speed_entry(plan_dir, "gemma-2b-shaped-fp16",
                                     gemma_2b_checkpoint(out / "gemma-2b-shaped", GEMMA_2B_LAYERS), dtype="fp16")]
        shutil.rmtree(out / "gemma-2b-shaped")
    (plan_dir / "plan.json").write_text(json.dumps(plan, indent=1))
    carried = sum(p.stat().st_size for p in plan_dir.rglob("*") if p.is_file())
    if carried > PIECE_BYTES:
        raise SystemExit(f"the plan is {carried / 2**20:.1f} MiB: more than one call carries")
    print(f"{len(pieces)} pieces of the {wheel.stat().st_size / 2**20:.0f} MiB wheel in {out / 'pieces'}, "
          f"then the plan ({carried / 2**20:.1f} MiB): {len(pieces) + 1} calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="wheel pieces, artifacts and references under --out")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (the wheel is per version)")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu_check")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                   help="also the 270M and 2B-shaped timing artifacts (minutes of export)")
    args = parser.parse_args()
    prepare(args)


if __name__ == "__main__":
    main()
