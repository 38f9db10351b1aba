"""Run the gemma-export CLI in-process, as a user would from the shell."""

from __future__ import annotations

import sys

import pytest

from gemma_export.cli import main


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["gemma-export", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err
