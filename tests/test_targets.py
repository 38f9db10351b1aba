"""The targets table (gemma_export/targets.py) is the one description of each target: passes read
its facts, never target names, and the README's table is made from it (tests/test_pipeline.py
checks the pipelines built from its lists)."""

import re

import pytest

from conftest import REPO
from gemma_export.targets import DEFAULT_TARGET, TARGETS, readme_table

PASSES = REPO / "gemma_export" / "passes"


def test_readme_targets_table_is_the_table():
    assert readme_table() in (REPO / "README.md").read_text()


@pytest.mark.parametrize("name", TARGETS)
def test_every_pass_of_every_target_exists(name):
    assert [m.NAME for m in TARGETS[name].pass_modules()] == list(TARGETS[name].passes)


def test_no_pass_tests_a_target_name():
    quoted = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, TARGETS)))
    passes = [p for p in PASSES.glob("*.py") if re.search(r"^NAME = ", p.read_text(), re.M)]
    assert len(passes) >= 20
    offenders = [p.name for p in passes if quoted.search(p.read_text())]
    assert offenders == []


def test_default_target_comes_first_and_defaults_are_allowed():
    assert DEFAULT_TARGET == next(iter(TARGETS)) == "ort-cpu"
    for target in TARGETS.values():
        assert target.dtypes and target.quants and target.backends and target.devices
