"""Exports to trust: two processes exporting the same source with the same options write the same
bytes; the manifest records each file's size and sha256 and `inspect --verify` checks them; an
export SIGKILLed at any point leaves no OUT or the previous one (or an old OUT the next export puts
back), and the next export to the same place cleans up after it; an export that finds another one
writing OUT fails at once and touches nothing of it.

The killed and compared exports run in processes of their own (export_child.py), several at once."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx_ir as ir
import pytest

from cli_util import cli
from gemma_export import export as export_module
from gemma_export.checkpoints import open_source
from gemma_export.errors import GemmaExportError
from gemma_export.export import export
from gemma_export.describe import verify
from gemma_export.targets import ExportOptions
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import DATA_FILE, MANIFEST_FILE, MODEL_FILE, read_manifest
from test_chat_tokens import gemma1_like_tokenizer

CHILD = Path(__file__).resolve().parent / "export_child.py"
OPTIONS = {"max_seq_len": 64}  # what the killed exports write over PREVIOUS
PREVIOUS = {"max_seq_len": 32}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints, tmp_path_factory) -> Path:
    """Tiny Gemma 3 (rings, QK norms) with a tokenizer, so that the artifact has one too."""
    folder = tmp_path_factory.mktemp("safety") / "ckpt"
    shutil.copytree(tiny_checkpoints["gemma3"], folder)
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    return folder


def start_child(spec: dict, spec_file: Path, **env) -> subprocess.Popen:
    """export_child.py on spec in a new process (env: added to this one's)."""
    spec_file.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, str(CHILD), str(spec_file)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def exit_codes(child: subprocess.Popen) -> list[int]:
    """Those of its runs (-9: killed)."""
    stdout, stderr = child.communicate(timeout=600)
    if child.returncode != 0 or not stdout.strip():
        pytest.fail(f"export_child.py exited {child.returncode}:\n{stderr[-3000:]}")
    codes = json.loads(stdout.splitlines()[-1])
    if any(code not in (0, -signal.SIGKILL) for code in codes):
        pytest.fail(f"export runs exited {codes}:\n{stderr[-3000:]}")
    return codes


def files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def beside(out: Path) -> list[str]:
    """The temporary names beside OUT, process ids as PID."""
    return sorted(re.sub(r"-\d+$", "-PID", p.name) for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# --- the same bytes from two processes ---------------------------------------------------------

# The int4 recipe's bytes are compared across processes by tests/test_host_independence.py.
REPRODUCED = {"ort-cpu": {}, "onnx": {"target": "onnx"}}


def test_two_processes_write_the_same_bytes(checkpoint, tmp_path, tmp_path_factory):
    # each child traces the checkpoint itself; the hash seeds differ, so that a pass that names or
    # orders things by iterating a set or a dict of strings shows here
    children = [start_child({"source": str(checkpoint), "runs": [{"exports": [
                    {"out": str(tmp_path / f"seed{seed}" / name), "options": {**OPTIONS, **options}}
                    for name, options in REPRODUCED.items()]}]}, tmp_path / f"seed{seed}.json", PYTHONHASHSEED=str(seed))
                for seed in (1, 2)]
    assert [exit_codes(child) for child in children] == [[0], [0]]
    temporary = str(tmp_path_factory.getbasetemp()).encode()  # above OUT and the checkpoint
    installed = str(Path(export_module.__file__).resolve().parents[1]).encode()  # the tracer's stack traces named it
    for name in REPRODUCED:
        first, second = files(tmp_path / "seed1" / name), files(tmp_path / "seed2" / name)
        assert sorted(first) == [MANIFEST_FILE, MODEL_FILE, DATA_FILE, "tokenizer.model"]
        for file in (MODEL_FILE, DATA_FILE, "tokenizer.model"):
            assert first[file] == second[file], f"{name}: {file} differs between the two processes"
            assert temporary not in first[file] and installed not in first[file]
        manifests = [json.loads(m) for m in (first[MANIFEST_FILE], second[MANIFEST_FILE])]
        assert all(m.pop("export_seconds") > 0 for m in manifests) and manifests[0] == manifests[1]
        assert str(tmp_path).encode() not in first[MANIFEST_FILE]  # the source's path is there, OUT's is not
        assert manifests[0]["files"] == {file: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                         for file, data in first.items() if file != MANIFEST_FILE}


# --- inspect --verify ---------------------------------------------------------------------------

def test_verify_reports_each_file(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    export(checkpoint, out, ExportOptions(**OPTIONS))
    code, stdout, _ = cli(capsys, "inspect", out, "--verify")
    assert code == 0 and stdout.split() == [MODEL_FILE, "OK", DATA_FILE, "OK", "tokenizer.model", "OK"]

    data = bytearray((out / DATA_FILE).read_bytes())
    data[len(data) // 2] ^= 1
    (out / DATA_FILE).write_bytes(data)
    (out / "tokenizer.model").unlink()
    code, stdout, err = cli(capsys, "inspect", out, "--verify")
    lines = [" ".join(line.split()) for line in stdout.splitlines()]
    assert code == 2 and lines[0] == f"{MODEL_FILE} OK" and lines[2] == "tokenizer.model MISSING"
    assert lines[1].startswith(f"{DATA_FILE} MISMATCH (sha256 ")
    assert err.strip() == (f"error: {out}: 2 of 3 files do not match the manifest: "
                           f"{DATA_FILE} (MISMATCH), tokenizer.model (MISSING)")

    # an artifact of manifest format 2 (no hashes) still loads; --verify says it has nothing to check
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    del manifest["files"]
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 2}))
    assert read_manifest(out).files == {}
    code, _, err = cli(capsys, "inspect", out, "--verify")
    assert code == 2 and "records no file hashes (format_version 2)" in err and len(err.strip().splitlines()) == 1


# --- killed exports -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Kill:
    replace: bool  # the export replaces an OUT (--force)
    at: str  # its kill point (export_child.py)
    left: str  # OUT after the kill: "none", "previous" (the replaced one, byte for byte) or "new"
    beside: tuple[str, ...]  # the temporary names left beside OUT
    next_force: bool  # whether the next export to OUT is given --force
    recovered: tuple[str, ...]  # what that export says it did first, in order
    refused: bool  # whether it then refuses, OUT existing and no --force
    after: str  # OUT after it


PARTIAL, OLD, LOCK = ".out.partial-PID", ".out.old-PID", ".out.lock"
KILLS = {
    "fresh, writing weights": Kill(False, "weights:3", "none", (LOCK, PARTIAL), False, ("removed",), False, "new"),
    "force, writing weights": Kill(True, "weights:3", "previous", (LOCK, PARTIAL), True, ("removed",), False, "new"),
    "force, after the manifest": Kill(True, "manifest", "previous", (LOCK, PARTIAL), False, ("removed",), True,
                                      "previous"),
    "force, between the renames": Kill(True, "rename:1", "none", (LOCK, OLD, PARTIAL), False, ("restored", "removed"),
                                       True, "previous"),
    "force, after the swap": Kill(True, "rename:2", "new", (LOCK, OLD), False, ("removed",), True, "new"),
}


@pytest.fixture(scope="module")
def killed(checkpoint, tmp_path_factory) -> dict[str, tuple[Path, dict[str, bytes]]]:
    """name -> (OUT, the previous OUT's files) once the export of KILLS[name] was killed. The
    exports run at once, on a traced model read from a file (tracing takes seconds)."""
    root = tmp_path_factory.mktemp("killed")
    traced = root / "traced.onnx"
    model = export_module.trace(open_source(checkpoint).config)  # conftest.py: a copy of the session's trace
    traced.write_bytes(ir.serde.serialize_model(model).SerializeToString())
    previous = root / "previous"
    export(checkpoint, previous, ExportOptions(**PREVIOUS))
    cases, runs = {}, []
    for i, (name, kill) in enumerate(KILLS.items()):
        out = root / f"case{i}" / "out"
        out.parent.mkdir()
        if kill.replace:
            shutil.copytree(previous, out)
        cases[name] = out, files(previous)
        runs.append({"kill": kill.at, "exports": [{"out": str(out), "options": OPTIONS, "force": kill.replace}]})
    child = start_child({"source": str(checkpoint), "traced": str(traced), "runs": runs}, root / "spec.json")
    assert exit_codes(child) == [-signal.SIGKILL] * len(runs)  # each one reached its kill point
    return cases


@pytest.mark.parametrize("name", KILLS)
def test_a_killed_export_leaves_out_whole_and_the_next_one_cleans_up(name, killed, checkpoint):
    kill, (out, previous) = KILLS[name], killed[name]
    assert state(out, previous) == kill.left
    assert beside(out) == list(kill.beside)
    old = [p for p in out.parent.iterdir() if p.name.startswith(".out.old-")]
    assert all(files(p) == previous for p in old)  # the replaced OUT, whole, until removed

    notes = []
    try:
        export(checkpoint, out, ExportOptions(**OPTIONS), force=kill.next_force,
               progress=lambda what, done, total: notes.append(what) if "interrupted" in what else None)
        error = None
    except GemmaExportError as e:
        error = str(e)
    assert [note.split()[0] for note in notes] == list(kill.recovered)
    assert error == (f"{out} already exists (use --force to replace it)" if kill.refused else None)
    assert state(out, previous) == kill.after and beside(out) == []


def test_an_export_fails_at_once_while_another_one_writes_out(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    live = tmp_path / ".out.partial-4242"  # as a live export's folder would be
    live.mkdir()
    (live / DATA_FILE).write_bytes(b"being written")
    with open(tmp_path / ".out.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, _, err = cli(capsys, "export", checkpoint, "-o", out)
        assert (code, err.strip()) == (2, f"error: another export is writing {out} (it holds .out.lock); "
                                          "wait for it to finish")
        assert (live / DATA_FILE).read_bytes() == b"being written" and not out.exists()
    # that export gone without cleaning up, the next one removes its folder
    export(checkpoint, out, ExportOptions(**OPTIONS))
    assert state(out, {}) == "new" and beside(out) == []


def state(out: Path, previous: dict[str, bytes]) -> str:
    if not out.exists():
        return "none"
    if files(out) == previous:
        return "previous"
    assert read_manifest(out).kv_cache.max_seq_len == OPTIONS["max_seq_len"]
    assert set(verify(out).values()) == {"OK"}
    return "new"


# --- a crafted manifest may not lead the runtime out of the artifact ------------------------------

@pytest.mark.parametrize("entry,value", [("graph", "../outside.onnx"), ("data", "/etc/passwd"),
                                         ("engine", "../model.engine"), ("engine", "..")])
def test_a_manifest_naming_files_outside_the_artifact_is_refused(checkpoint, tmp_path_factory, entry, value):
    out = tmp_path_factory.getbasetemp() / "confined"
    if not out.exists():
        export(checkpoint, out, ExportOptions(**OPTIONS))
    crafted = tmp_path_factory.mktemp("crafted") / "out"
    shutil.copytree(out, crafted)
    manifest = json.loads((crafted / MANIFEST_FILE).read_text())
    if entry == "engine":
        manifest["engines"] = [{"file": value, "library": "tensorrt_rtx", "version": "1", "compute_capability": "8.9"}]
    else:
        manifest["graphs"]["decoder"]["file" if entry == "graph" else "data_file"] = value
    (crafted / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(RuntimeInputError, match=f"malformed manifest .*names '{re.escape(value)}', not a file name "
                                                "of the artifact"):
        read_manifest(crafted)
