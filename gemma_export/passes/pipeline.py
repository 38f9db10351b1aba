"""Runs a target's passes in order (gemma_export/targets.py lists them), and can dump the IR
after each pass or hand the graph to a check after each runnable group of passes (Target.groups)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import remove_dead

# (the group, its passes' manifest entries, the model as the group left it)
GroupCheck = Callable[[tuple[str, ...], list[dict], ir.Model], None]


def run_pipeline(model: ir.Model, ctx: PassContext, dump_dir: Path | None = None,
                 on_pass: Callable[[str, int], None] | None = None, after_group: GroupCheck | None = None) -> list[dict]:
    """Runs ctx.target's passes in order; returns [{"name", "rewrites"}] for the manifest."""
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        _dump(model, dump_dir / "00-traced.txt")
    done = []
    group_ending_at = dict(zip(itertools.accumulate(len(g) for g in ctx.target.groups), ctx.target.groups))
    for i, p in enumerate(ctx.target.pass_modules(), start=1):
        rewrites = p.run(model, ctx)
        remove_dead(model)
        done.append({"name": p.NAME, "rewrites": rewrites})
        if on_pass:
            on_pass(p.NAME, rewrites)
        if dump_dir is not None:
            _dump(model, dump_dir / f"{i:02d}-{p.NAME}.txt")
        if after_group is not None and i in group_ending_at:
            group = group_ending_at[i]
            after_group(group, done[-len(group):], model)
    return done


def _dump(model: ir.Model, path: Path) -> None:
    path.write_text(str(model))
