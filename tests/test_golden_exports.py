"""Every tiny config x target x precision exports the graph captured in tests/golden/exports.json:
the same op multiset, inputs, outputs and initializer bytes (see tests/golden_exports.py)."""

import json

import pytest

from gemma_export.errors import GemmaExportError
from golden_exports import FIXTURE, cases, export_case, fingerprint, key
from tiny import CONFIGS

GOLDEN = json.loads(FIXTURE.read_text())
CASES = cases(sorted(CONFIGS))


def test_fixture_covers_every_case():
    assert sorted(GOLDEN) == sorted(key(*c) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[key(*c) for c in CASES])
def test_export_matches_the_golden_fixture(case, tiny_checkpoints, tmp_path):
    expected = GOLDEN[key(*case)]
    if "refused" in expected:  # e.g. fp32 on ort-cuda, whose attention kernel has fp16/bf16 only
        with pytest.raises(GemmaExportError) as refusal:
            export_case(tiny_checkpoints[case[0]], tmp_path / "out", *case[1:])
        assert f"{type(refusal.value).__name__}: {refusal.value}" == expected["refused"]
        return
    export_case(tiny_checkpoints[case[0]], tmp_path / "out", *case[1:])
    got = fingerprint(tmp_path / "out")
    assert got["ops"] == expected["ops"]
    assert got["functions"] == expected["functions"]
    assert got["inputs"] == expected["inputs"]
    assert got["outputs"] == expected["outputs"]
    differing = sorted(n for n in expected["initializers"] if got["initializers"].get(n) != expected["initializers"][n])
    assert not differing and set(got["initializers"]) == set(expected["initializers"]), differing[:5]
