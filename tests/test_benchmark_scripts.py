"""Every benchmark script imports (a refactor that renames what a script imports breaks it only
when someone runs it, hours later) and answers --help; benchmarks/multimodal.py runs on a tiny config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text())


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_answers_help(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_multimodal_runs_on_the_tiny_config(tmp_path):
    """benchmarks/multimodal.py end to end on tests/tiny.py's Gemma 3 (about a minute: the export
    and transformers' import dominate)."""
    out = tmp_path / "multimodal.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "multimodal.py"), "--cases", "tiny-gemma3", "--repeats",
                           "1", "--json", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (case,) = json.loads(out.read_text())["cases"]
    assert case["case"] == "tiny-gemma3" and case["image_tokens"] == 4
    for side in ("ours", "transformers"):
        assert all(case[side][k] > 0 for k in ("preprocess_s", "encode_s", "prefill_s", "ttft_s"))
    assert case["first_tokens_equal"]  # the same random checkpoint, fp32 on both sides
    assert case["export"]["peak_rss_mib"] > 0 and case["export"]["image_encoder_mib"] > 0
    assert "encode x" in done.stdout
