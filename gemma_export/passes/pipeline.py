"""The ordered pass list of each target, and the runner that can dump the IR after each pass."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import onnx_ir as ir

from gemma_export.passes import fold_weight_transposes, tied_lm_head
from gemma_export.passes.context import PassContext, TARGETS
from gemma_export.passes.ir_utils import remove_dead
from gemma_export.errors import GemmaExportError

PIPELINES: dict[str, list[ModuleType]] = {
    "generic": [
        tied_lm_head,
        fold_weight_transposes,
    ],
}


def targets_available() -> list[str]:
    return [t for t in TARGETS if t in PIPELINES]


def run_pipeline(model: ir.Model, ctx: PassContext, dump_dir: Path | None = None,
                 on_pass: Callable[[str, int], None] | None = None) -> list[dict]:
    """Runs the target's passes in order; returns [{"name", "rewrites"}] for the manifest."""
    target = ctx.options.target
    if target not in PIPELINES:
        raise GemmaExportError(f"target {target!r} is not available (available: {', '.join(targets_available())})")
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        _dump(model, dump_dir / "00-traced.txt")
    done = []
    for i, p in enumerate(PIPELINES[target], start=1):
        rewrites = p.run(model, ctx)
        remove_dead(model)
        done.append({"name": p.NAME, "rewrites": rewrites})
        if on_pass:
            on_pass(p.NAME, rewrites)
        if dump_dir is not None:
            _dump(model, dump_dir / f"{i:02d}-{p.NAME}.txt")
    return done


def _dump(model: ir.Model, path: Path) -> None:
    path.write_text(str(model))
