"""A target's pipeline: the passes of its list (gemma_export/targets.py) that act at the given
options and config, in order, each checked against what the passes declare; and the run of it,
which can dump the IR after each pass or hand the graph to a check after each runnable group.

A pass module declares, beside NAME and run():
- `acts(target, options, config) -> bool`: whether it acts there (absent: always). A pass that
  does not act is left out of the pipeline, the manifest's `passes` and `--dump-ir`.
- AFTER: passes that, where the pipeline has them, run before it.
- REQUIRES: passes that must have run before it.
- UNRUNNABLE_UNTIL: after it, the graph does not run in onnxruntime until one of these has run
  (`validate --bisect` checks the graph only where it runs: runnable_groups()).
"""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import onnx_ir as ir

from gemma_export.passes.context import PassContext
from gemma_export.passes.ir_utils import remove_dead
from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

# (the group, its passes' manifest entries, the model as the group left it)
GroupCheck = Callable[[tuple[str, ...], list[dict], ir.Model], None]


class PipelineOrderError(ValueError):
    """A pipeline that breaks what one of its passes declares."""


def pipeline(target: Target, options: ExportOptions, config: GemmaConfig) -> tuple[ModuleType, ...]:
    """The passes of the target's list that act at these options on this config, in order."""
    modules = [importlib.import_module(f"gemma_export.passes.{name}") for name in target.passes]
    acting = tuple(m for m in modules if not hasattr(m, "acts") or m.acts(target, options, config))
    check_order(acting)
    return acting


def check_order(passes: Sequence[ModuleType]) -> None:
    """Raises PipelineOrderError, naming both passes, where the order breaks a declaration."""
    at: dict[str, int] = {}
    for i, p in enumerate(passes):
        if p.NAME in at:
            raise PipelineOrderError(f"{p.NAME} is in the pipeline twice")
        at[p.NAME] = i
    for i, p in enumerate(passes):
        for name in getattr(p, "REQUIRES", ()):
            if name not in at:
                raise PipelineOrderError(f"{p.NAME} requires {name}, which is not in the pipeline")
        for name in (*getattr(p, "REQUIRES", ()), *getattr(p, "AFTER", ())):
            if at.get(name, -1) > i:
                raise PipelineOrderError(f"{p.NAME} must run after {name}, not before it")
        until = getattr(p, "UNRUNNABLE_UNTIL", ())
        if until and not any(at.get(name, -1) > i for name in until):
            raise PipelineOrderError(f"the graph never runs again after {p.NAME} (it waits for {' or '.join(until)})")


def runnable_groups(passes: Sequence[ModuleType]) -> tuple[tuple[str, ...], ...]:
    """The pipeline's pass names cut after each pass the graph runs after (check_order() holds)."""
    groups, current, waiting_for = [], [], ()
    for p in passes:
        current.append(p.NAME)
        if getattr(p, "UNRUNNABLE_UNTIL", ()):
            waiting_for = p.UNRUNNABLE_UNTIL
        elif not waiting_for or p.NAME in waiting_for:
            groups.append(tuple(current))
            current, waiting_for = [], ()
    return tuple(groups)


def run_pipeline(model: ir.Model, ctx: PassContext, dump_dir: Path | None = None,
                 on_pass: Callable[[str, int], None] | None = None, after_group: GroupCheck | None = None) -> list[dict]:
    """Runs the pipeline of ctx's target, options and config; returns [{"name", "rewrites"}] for the manifest."""
    passes = pipeline(ctx.target, ctx.options, ctx.config)
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        _dump(model, dump_dir / "00-traced.txt")
    done = []
    groups = runnable_groups(passes)
    group_ending_at = dict(zip(itertools.accumulate(len(g) for g in groups), groups))
    for i, p in enumerate(passes, start=1):
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
