"""The onnxruntime versions the artifacts claim, proved: the floor (pyproject's `onnxruntime>=`,
the runtime's MIN_ONNXRUNTIME) and onnxruntime-gpu's newest release (1.31.1, whose CPU build runs
ort-cuda's graph on the CPU provider here), each installed beside the suite by `make test`
(`make onnxruntime-versions`), run a child process with that onnxruntime first on its path: an
export, every family's parity against transformers (ort-cpu fp32, ort-cuda fp16, onnx) and a
serve smoke test (tests/onnxruntime_floor_child.py). Before 1.27, int4 MatMulNBits returns wrong
logits without an error and 1.23 runs ort-cpu's attention wrong (measured): the floor refuses them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gemma_runtime.backends.ort_session import MIN_ONNXRUNTIME
from parity import hf_logits, prompt
from tiny import FAMILY_CONFIGS, hf_model

ROOT = Path(__file__).resolve().parents[1]
VERSIONS_DIR = ROOT / ".venv" / "onnxruntime-versions"  # make onnxruntime-versions installs them here
FLOOR, GPU_NEWEST = "1.27.0", "1.31.1"
CHILD_TIMEOUT_S = 600


def test_the_floor_is_the_one_pyproject_and_the_runtime_state():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = ".".join(FLOOR.split(".")[:2])
    assert f'"onnxruntime>={floor}"' in pyproject and f'"onnxruntime-gpu>={floor}"' in pyproject
    assert MIN_ONNXRUNTIME == tuple(int(p) for p in FLOOR.split(".")[:2])
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"ONNXRUNTIME_VERSIONS := .*\b{re.escape(FLOOR)}\b.*\b{re.escape(GPU_NEWEST)}\b", makefile)


@pytest.fixture(scope="module")
def plan(target_artifacts, tiny_checkpoints, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnxruntime-versions")
    references = root / "references"
    references.mkdir()
    for name in FAMILY_CONFIGS:
        model = hf_model(name)
        np.savez(references / f"{name}.npz", whole=hf_logits(model, prompt(1, 40)),
                 stepwise=hf_logits(model, prompt(2, 30))[4:])
    artifacts = {f"ort-cpu {name}": [str(folder), name] for name, folder in target_artifacts("ort-cpu").items()}
    artifacts["ort-cuda gemma3"] = [str(target_artifacts("ort-cuda")["gemma3"]), "gemma3"]
    artifacts["onnx gemma4-shared"] = [str(target_artifacts("onnx")["gemma4-shared"]), "gemma4-shared"]
    plan = {"checkpoint": str(tiny_checkpoints["gemma2"]), "checkpoint_name": "gemma2",
            "export_to": str(root / "exported"), "references": str(references), "artifacts": artifacts}
    (root / "plan.json").write_text(json.dumps(plan))
    return root


@pytest.mark.parametrize("version", [FLOOR, GPU_NEWEST])
def test_artifacts_keep_parity_on_this_onnxruntime(version, plan):
    package = VERSIONS_DIR / version
    assert (package / "onnxruntime").is_dir(), f"onnxruntime {version} is not installed in {package}: run make test"
    plan_file = plan / "plan.json"
    data = json.loads(plan_file.read_text())
    data["export_to"] = str(plan / f"exported-{version}")
    (plan / f"plan-{version}.json").write_text(json.dumps(data))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, str(ROOT / "tests" / "onnxruntime_floor_child.py"), version,
                            str(plan / f"plan-{version}.json")], env=env, capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT_S, cwd=ROOT)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["onnxruntime"] == version and result["serve"] == 200
    assert len(result["worst_relative"]) == len(data["artifacts"]) + 1
