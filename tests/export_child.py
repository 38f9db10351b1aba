"""Exports in processes of their own, for the tests that compare exports made by different
processes and that kill an export at a chosen point (test_artifact_safety.py):

    python export_child.py SPEC.json

SPEC: {"source": checkpoint folder, "traced": a traced model (serialized ModelProto) to use instead
of tracing (optional), "runs": [{"exports": [{"out": folder, "options": {ExportOptions fields},
"force": bool}, ...], "kill": where to SIGKILL the run (optional)}, ...]}. Each run is a process
forked from this one once it has imported everything (seconds saved per run), all at once; this
one prints their exit codes as a JSON list (-9: killed). Kill points:

    weights:N   after the Nth tensor written to the data file
    manifest    after manifest.json is written (all files written, nothing fsynced or renamed)
    rename:N    right after the Nth rename once the manifest is written (with an OUT to replace:
                1 = between the two renames, 2 = after the swap, before the old OUT is removed)

Tracing depends on the config alone: a run traces each config once and every export gets a copy
(its weights are bound again), as the test session does (conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from gemma_export import export as export_module
from gemma_export.targets import ExportOptions


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def traced_once(traced_file: str | None):
    trace, traced = export_module.trace, {}

    def cached(cfg):
        if cfg not in traced:
            if traced_file:
                traced[cfg] = onnx.load(traced_file)
            else:
                model = trace(cfg)
                for value in model.graph.initializers.values():
                    value.const_value = ir.Tensor(np.zeros(value.shape.numpy(), np.float32), name=value.name)
                traced[cfg] = ir.serde.serialize_model(model)
        return ir.serde.deserialize_model(traced[cfg])

    return cached


def arm(kill: str | None):
    """Installs the kill point; returns the progress callback to export with."""
    point, _, count = (kill or "").partition(":")
    if point == "weights":
        return lambda what, done, total: die() if what == "writing weights" and done == int(count) else None
    if point in ("manifest", "rename"):
        write_manifest, rename, renames = export_module.write_manifest, os.rename, []

        def counted_rename(*args, **kwargs):
            rename(*args, **kwargs)
            renames.append(args)
            if len(renames) == int(count):
                die()

        def written(*args, **kwargs):
            write_manifest(*args, **kwargs)
            if point == "manifest":
                die()
            os.rename = counted_rename

        export_module.write_manifest = written
    elif kill:
        raise ValueError(f"unknown kill point {kill!r}")
    return None


def start(source: str, run: dict) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:
        progress = arm(run.get("kill"))
        for job in run["exports"]:
            export_module.export(source, job["out"], ExportOptions(**job.get("options", {})),
                                 force=job.get("force", False), progress=progress)
    except BaseException:  # noqa: BLE001 - reported, and the exit code says it
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    export_module.trace = traced_once(spec.get("traced"))
    pids = [start(spec["source"], run) for run in spec["runs"]]
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))


if __name__ == "__main__":
    main(sys.argv[1])
