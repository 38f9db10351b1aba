"""Every benchmark script imports (a refactor that renames what a script imports breaks it only
when someone runs it, hours later) and answers --help. The scripts start at once, each in its own
process (importing torch takes seconds each), and each test reads its own."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text())


@pytest.fixture(scope="module")
def answers() -> dict[Path, tuple[int, str, str]]:
    """script -> (exit code, stdout, stderr) of `script --help`."""
    started = {script: subprocess.Popen([sys.executable, str(script), "--help"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for script in SCRIPTS}
    done = {}
    for script, process in started.items():
        stdout, stderr = process.communicate(timeout=300)
        done[script] = process.returncode, stdout, stderr
    return done


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_answers_help(script, answers):
    code, stdout, stderr = answers[script]
    assert code == 0, stderr[-2000:]
    assert "usage" in stdout.lower()
