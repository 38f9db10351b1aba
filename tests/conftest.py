import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real Gemma 3 270M is assembled once into this cache and reused by every test run.
os.environ.setdefault("GEMMA_EXPORT_CACHE", str(REPO / ".cache" / "gemma-export"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """name -> HF folder of a tiny random checkpoint (see tests/tiny.py)."""
    from tiny import CONFIGS, write_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: write_checkpoint(name, root / name) for name in CONFIGS}


@pytest.fixture(scope="session")
def precision_checkpoints(tmp_path_factory):
    """"peaked" and "huge_residual" tiny Gemma 3 checkpoints (see tests/precision_models.py)."""
    from precision_models import write

    root = tmp_path_factory.mktemp("precision_checkpoints")
    return {"peaked": write(root / "peaked"), "huge_residual": write(root / "huge_residual", huge_residual=True)}


@pytest.fixture(scope="session")
def generic_artifacts(tiny_checkpoints, tmp_path_factory):
    """name -> generic-target artifact of each tiny checkpoint."""
    from gemma_export.export import export
    from gemma_export.passes.context import ExportOptions

    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for name, folder in tiny_checkpoints.items():
        export(folder, root / name, ExportOptions(target="generic"))
        out[name] = root / name
    return out
