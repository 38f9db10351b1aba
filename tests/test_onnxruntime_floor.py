"""The dependency versions the artifacts claim, proved. The floors: pyproject's lower bound of each
package the runtime, the server and the export import (onnxruntime's also the runtime's
MIN_ONNXRUNTIME), installed together by `make test` (`make dependency-floors`, the Makefile's
DEPENDENCY_FLOORS); and onnxruntime-gpu's newest release (1.31.1, whose CPU build runs ort-cuda's graph
on the CPU provider here, `make onnxruntime-versions`). Each runs a child process with those packages
first on its path (tests/onnxruntime_floor_child.py): an export, every family's parity against
transformers (ort-cpu fp32, ort-cuda fp16, onnx), the server with both tokenizers and a JSON schema.
Below the floors (measured, README "Dependency floors"): onnxruntime 1.26 returns wrong int4
MatMulNBits logits without an error, pydantic 2.0 lacks Discriminator, llguidance 1.6 takes one stop
token, onnx-ir 0.1.15 and onnxscript 0.5 lack what torch 2.13's exporter imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from packaging.version import Version

import gemma_runtime

from gemma_runtime.backends.ort_session import MIN_ONNXRUNTIME
from parity import hf_logits, prompt
from test_chat_template import gemma4_tokenizer_json
from tiny import FAMILY_CONFIGS, hf_model

ROOT = Path(__file__).resolve().parents[1]
FLOOR, GPU_NEWEST = "1.27.0", "1.31.1"
PACKAGES = {FLOOR: ROOT / ".venv" / "dependency-floors",  # make dependency-floors
            GPU_NEWEST: ROOT / ".venv" / "onnxruntime-versions" / GPU_NEWEST}  # make onnxruntime-versions
CHILD_TIMEOUT_S = 600


def test_the_floor_is_the_one_pyproject_and_the_runtime_state():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = ".".join(FLOOR.split(".")[:2])
    assert f'"onnxruntime>={floor}"' in pyproject and f'"onnxruntime-gpu>={floor}"' in pyproject
    assert MIN_ONNXRUNTIME == tuple(int(p) for p in FLOOR.split(".")[:2])
    assert dependency_floors()["onnxruntime"] == FLOOR
    assert re.search(rf"ONNXRUNTIME_VERSIONS := .*\b{re.escape(GPU_NEWEST)}\b", (ROOT / "Makefile").read_text())


REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?(==|>=)([0-9.]+)")


def dependency_floors() -> dict[str, str]:
    """The Makefile's DEPENDENCY_FLOORS: package -> pinned version."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    pins = [REQUIREMENT.fullmatch(pin) for pin in re.search(r"^DEPENDENCY_FLOORS := (.*)$", text, re.M)[1].split()]
    return {canonical(pin[1]): pin[3] for pin in pins if pin[2] == "=="}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_each_floor_installed_is_the_lower_bound_pyproject_states():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]:
        if (match := REQUIREMENT.fullmatch(requirement)) and match[2] == ">=":
            bounds.setdefault(canonical(match[1]), set()).add(Version(match[3]))
    for package, version in dependency_floors().items():
        assert bounds.get(package) == {Version(version)}, (package, version, bounds.get(package))


@pytest.fixture(scope="module")
def plan(target_artifacts, tiny_checkpoints, server_artifact, tmp_path_factory) -> Path:
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
    tokenizer_json = root / "tokenizer.json"
    tokenizer_json.write_text(gemma4_tokenizer_json())
    text = "<bos>user hello <|turn>world weather? <turn|>"
    ids = tokenizers.Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
    plan = {"checkpoint": str(tiny_checkpoints["gemma2"]), "checkpoint_name": "gemma2",
            "export_to": str(root / "exported"), "references": str(references), "artifacts": artifacts,
            "tokenizer_json": {"path": str(tokenizer_json), "text": text, "ids": ids},
            "server_artifact": str(server_artifact),
            "server_completion": gemma_runtime.load(server_artifact).generate("abc", max_new_tokens=6).text}
    (root / "plan.json").write_text(json.dumps(plan))
    return root


@pytest.mark.parametrize("version", [FLOOR, GPU_NEWEST])
def test_artifacts_keep_parity_on_this_onnxruntime(version, plan):
    package = PACKAGES[version]
    assert (package / "onnxruntime").is_dir(), f"onnxruntime {version} is not installed in {package}: run make test"
    plan_file = plan / "plan.json"
    data = json.loads(plan_file.read_text())
    data["export_to"] = str(plan / f"exported-{version}")
    data["versions"] = dependency_floors() if version == FLOOR else {"onnxruntime": version}
    (plan / f"plan-{version}.json").write_text(json.dumps(data))
    path = [str(package), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    child = subprocess.run([sys.executable, str(ROOT / "tests" / "onnxruntime_floor_child.py"), version,
                            str(plan / f"plan-{version}.json")], env=env, capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT_S, cwd=ROOT)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["versions"] == data["versions"] and result["serve"] == 200
    assert len(result["worst_relative"]) == len(data["artifacts"]) + 2
