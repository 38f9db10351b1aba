"""Every tiny config x target x precision exports the graph captured in tests/golden/exports.json:
the same op multiset, inputs, outputs and initializer bytes (see tests/golden_exports.py)."""

import json

import pytest

from golden_exports import FIXTURE, cases, export_case, fingerprint, key
from tiny import CONFIGS

GOLDEN = json.loads(FIXTURE.read_text())
CASES = cases(sorted(CONFIGS))

# Changes made on purpose since the capture, each with its reason.
NOW_REFUSED = {
    # onnxruntime registers its CUDA GroupQueryAttention for fp16 and bf16 only: an fp32 ort-cuda
    # graph could not run on the device it is for.
    (case_key, "fp32 on ort-cuda")
    for case_key in GOLDEN if "/ort-cuda/fp32/" in case_key
}


def test_fixture_covers_every_case():
    assert sorted(GOLDEN) == sorted(key(*c) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[key(*c) for c in CASES])
def test_export_matches_the_golden_fixture(case, tiny_checkpoints, tmp_path):
    name = key(*case)
    refused = dict(NOW_REFUSED).get(name)
    if refused:
        from gemma_export.errors import GemmaExportError

        with pytest.raises(GemmaExportError, match="fp16 or bf16"):
            export_case(tiny_checkpoints[case[0]], tmp_path / "out", *case[1:])
        return
    expected = GOLDEN[name]
    assert "refused" not in expected, expected
    export_case(tiny_checkpoints[case[0]], tmp_path / "out", *case[1:])
    got = fingerprint(tmp_path / "out")
    assert got["ops"] == expected["ops"]
    assert got["functions"] == expected["functions"]
    assert got["inputs"] == expected["inputs"]
    assert got["outputs"] == expected["outputs"]
    differing = sorted(n for n in expected["initializers"] if got["initializers"].get(n) != expected["initializers"][n])
    assert not differing and set(got["initializers"]) == set(expected["initializers"]), differing[:5]
