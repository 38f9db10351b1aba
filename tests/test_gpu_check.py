"""The GPU check (benchmarks/gpu_check.py prepares, benchmarks/gpu_check.sh runs there) proved on
the CPU as far as it goes: a wheel cut into pieces, joined and checked by the device script,
installed with --target first on PYTHONPATH, and the measuring half run on the CPU provider with
onnxruntime 1.31.1 (the CPU build of onnxruntime-gpu's newest release) over an ort-cuda artifact
(parity against transformers) and an artifact sent without its weights (timed on zeros)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from parity import hf_logits
from tiny import hf_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

WHEELS = ROOT / ".venv" / "onnxruntime-versions" / "wheels"  # make onnxruntime-versions keeps them


def test_a_file_cut_into_pieces_joins_byte_for_byte(tmp_path):
    data = np.random.default_rng(0).bytes(150_000)
    (tmp_path / "wheel").write_bytes(data)
    names = gpu_check.split(tmp_path / "wheel", tmp_path / "pieces", piece_bytes=64_000)
    assert names == ["00", "01", "02"]
    assert [len((tmp_path / "pieces" / n).read_bytes()) for n in names] == [64_000, 64_000, 22_000]
    assert b"".join((tmp_path / "pieces" / n).read_bytes() for n in names) == data


def test_the_device_script_runs_on_the_cpu_with_onnxruntime_1_31(target_artifacts, tmp_path):
    wheel = next(WHEELS.glob(f"onnxruntime-{gpu_check.ONNXRUNTIME_GPU}-*.whl"), None)
    assert wheel is not None, f"no onnxruntime {gpu_check.ONNXRUNTIME_GPU} wheel in {WHEELS}: run make test"
    check = tmp_path / "gpu_check"
    plan_dir = check / "plan"
    shutil.copytree(target_artifacts("ort-cuda")["gemma3"], plan_dir / "parity" / "gemma3")
    speed = shutil.copytree(target_artifacts("ort-cuda")["gemma-mqa"], plan_dir / "speed" / "gemma-mqa")
    data = speed / "model.onnx.data"
    zero_files = {data.name: data.stat().st_size}
    data.unlink()
    prompts = gpu_check.plan_prompts()
    hf = hf_model("gemma3")
    (plan_dir / "references").mkdir()
    np.savez(plan_dir / "references" / "gemma3.npz", whole=hf_logits(hf, prompts["whole"]),
             stepwise=hf_logits(hf, prompts["stepwise"])[prompts["prefill"] - 1:])
    pieces = gpu_check.split(wheel, check / "pieces", piece_bytes=8 * 2**20)
    plan = {"onnxruntime": gpu_check.ONNXRUNTIME_GPU, "wheel": wheel.name, "wheel_sha256": gpu_check.sha256(wheel),
            "pieces": pieces, "prompt": prompts, "speed_settings": {"prompt_tokens": 8, "new_tokens": 4, "batch": 2},
            "parity": [{"name": "gemma3 fp16", "artifact": "parity/gemma3", "reference": "references/gemma3.npz"}],
            "speed": [{"name": "gemma-mqa", "artifact": "speed/gemma-mqa", "zero_files": zero_files}]}
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "GPU_CHECK_DIR": str(check), "OUT": str(tmp_path / "out"), "DEVICE": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    first = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "piece", "00"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "piece 00: 8388608 bytes" in first.stdout, first.stderr
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "run"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["onnxruntime"] == gpu_check.ONNXRUNTIME_GPU and result["device"] == "cpu"
    [parity] = result["parity"]
    assert parity["whole_relative"] < 1e-2 and parity["stepwise_relative"] < 1e-2  # fp16 against fp32
    assert parity["whole_top1"] >= 0.9 and parity["stepwise_top1"] >= 0.9
    [timed] = result["speed"]
    assert timed["decode_tokens_per_s"] > 0 and timed["batch2_tokens_per_s"] > 0
    assert (speed / data.name).stat().st_size == zero_files[data.name]
    assert "gemma3 fp16" in run.stdout and "decode_tokens_per_s" in run.stdout

    (check / "pieces" / pieces[-1]).write_bytes(b"truncated")
    broken = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "run"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode == 2 and "sha256 is not the plan's" in broken.stderr
