"""The artifact directory, written into a temporary folder beside OUT and moved into place only
when complete and on disk; `--force` replaces an existing OUT in the same way.

Every name this module uses lies beside OUT and starts with `.<OUT name>.`:

    .OUT.lock           held (flock) by the one export writing OUT, from before tracing to the end
    .OUT.partial-PID    the folder being written
    .OUT.old-PID        the OUT that --force replaces, from the first rename until it is removed

An export killed at any point leaves OUT complete (the old or the new one), or no OUT and an old
one to put back; whatever it left, the next export to the same place resolves under the lock
before anything else (claim()). Holding the lock is what tells a dead run's folders from a live
export's: a live export holds it for as long as its folders exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import onnx
import onnx_ir as ir

from gemma_export.errors import GemmaExportError
from gemma_runtime.manifest import DATA_FILE, MANIFEST_FILE, MODEL_FILE, FileDigest

INLINE_MAX_BYTES = 256  # initializers this small stay inside model.onnx (onnx_ir's default threshold)


@dataclasses.dataclass(frozen=True)
class Claim:
    """OUT, held by this export (claim())."""

    out: Path


@contextlib.contextmanager
def claim(out: Path, force: bool, tell: Callable[[str], None] = lambda note: None) -> Iterator[Claim]:
    """Holds OUT's lock while the body runs, with what killed exports left beside OUT resolved (each
    step told) and OUT checked against `force`. Raises GemmaExportError at once when another export
    holds it.

    The lock file is removed by its holder before it lets go (so no empty file stays beside OUT
    after a normal run); _lock() handles the race that removal opens. After a kill it stays, empty,
    and the next export takes it."""
    lock = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(lock, out)
    except OSError as e:
        raise GemmaExportError(f"{out}: cannot write there ({e.strerror or e})") from None
    try:
        _recover(out, tell)
        _check_output(out, force)
        yield Claim(out)
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise GemmaExportError(f"{out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise GemmaExportError(f"{out} exists and is not a folder; refusing to replace it")
    if out.exists() and not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise GemmaExportError(f"{out} exists and is not an artifact; refusing to replace it")


@contextlib.contextmanager
def staging(claim: Claim) -> Iterator[Path]:
    """Yields a new folder beside OUT; when the body returns it becomes OUT (_commit), when the body
    fails it is removed."""
    out = claim.out
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(model: ir.Model, folder: Path, on_tensor: Callable[[str, int, int], None] | None = None,
               model_file: str = MODEL_FILE, data_file: str = DATA_FILE) -> dict[str, FileDigest]:
    """model.onnx + model.onnx.data (or the names given), each hashed as it is written; on_tensor(name, index, total)
    after each tensor. An initializer that is a row view of another (tensors.row_view) is not
    written: its TensorProto points into the other's bytes in model.onnx.data.

    onnx_ir's save gives no hook on the bytes it writes, so the tensors are written here, in
    initializer order and packed densely (as onnx_ir would), through _HashingWriter."""
    values = [v for graph in model.graphs() for v in graph.initializers.values() if v.const_value is not None]
    views = [v for v in values if getattr(v.const_value, "view_of", None) is not None]
    stored = [v for v in values if v not in views and v.const_value.nbytes > INLINE_MAX_BYTES]
    kept = {v: v.const_value for v in values}
    offsets: dict[str, int] = {}
    try:
        with _writing(folder / data_file) as data:
            for index, value in enumerate(stored):
                tensor = value.const_value
                offsets[value.name] = data.size
                tensor.tofile(data)  # a StreamedTensor writes row range by row range
                if data.size != offsets[value.name] + tensor.nbytes:
                    raise AssertionError(f"{value.name}: wrote {data.size - offsets[value.name]} bytes, "
                                         f"declared {tensor.nbytes}")
                value.const_value = _external(tensor, folder, offsets[value.name], data_file)
                if on_tensor:
                    on_tensor(value.name, index, len(stored))
        for value in views:
            base, tensor, first_row = value.const_value.view_of
            if kept.get(model.graph.initializers.get(base)) is not tensor or base not in offsets:
                raise AssertionError(f"{value.name} is a view of {base}, which a later pass replaced, "
                                     "removed or kept inside model.onnx")
            if value.dtype != tensor.dtype or list(value.shape.numpy()[1:]) != list(tensor.shape.numpy()[1:]):
                raise AssertionError(f"{value.name}: its rows do not match {base}")
            row_bytes = value.const_value.nbytes // value.shape[0]
            value.const_value = _external(value.const_value, folder, offsets[base] + first_row * row_bytes, data_file)
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in kept.items():
            value.const_value = tensor
    _drop_trace_metadata(proto.graph)
    for function in proto.functions:
        _drop_trace_metadata(function)
    with _writing(folder / model_file) as written:
        written.write(proto.SerializeToString())
    return {model_file: written.digest(), data_file: data.digest()}


def write_file(path: Path, data: bytes) -> FileDigest:
    with _writing(path) as f:
        f.write(data)
    return f.digest()


def _external(tensor: ir.TensorProtocol, folder: Path, offset: int, data_file: str) -> ir.ExternalTensor:
    return ir.ExternalTensor(data_file, offset, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=tensor.name,
                             base_dir=folder)


def _drop_trace_metadata(graph: onnx.GraphProto | onnx.FunctionProto) -> None:
    """The tracer's notes on each node (stack traces naming files of this installation, FX node
    text): an artifact's bytes must not depend on where gemma-export is installed."""
    for node in graph.node:
        del node.metadata_props[:]
        for attribute in node.attribute:
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                _drop_trace_metadata(subgraph)


class _HashingWriter:
    """A new file, with the size and sha256 of the bytes written to it. It has no fileno(), so
    tensors' tofile() goes through write()."""

    def __init__(self, file):
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self._hash.update(data)
        self.size += data.nbytes
        return self._file.write(data)

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self._hash.hexdigest())


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[_HashingWriter]:
    with open(path, "xb") as f:
        yield _HashingWriter(f)


def _lock(lock: Path, out: Path) -> int:
    """An exclusive flock on the lock file. Its holder removes it before letting go, so a process
    may lock a file that was removed meanwhile (opened before the removal, locked after the
    release): it checks that the path still names the file it locked, and tries again if not."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GemmaExportError(f"another export is writing {out} (it holds {lock.name}); "
                                   "wait for it to finish") from None
        with contextlib.suppress(FileNotFoundError):
            named, held = os.stat(lock), os.fstat(fd)
            if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                return fd
        os.close(fd)


def _recover(out: Path, tell: Callable[[str], None]) -> None:
    """Under the lock, before anything else: partial folders of killed exports are removed; an OUT
    that --force had moved aside comes back when OUT is missing (the export was killed between its
    two renames), else it is removed (killed after the swap)."""
    prefix = f".{out.name}."
    leftovers = sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()
                       and p.name[len(prefix):].startswith(("partial-", "old-")))
    for path in leftovers:
        if path.name[len(prefix):].startswith("old-") and not out.exists():
            os.rename(path, out)
            _fsync(out.parent)
            tell(f"restored {out.name} from {path.name}, left by an interrupted --force export")
        else:
            shutil.rmtree(path)
            tell(f"removed {path.name}, left by an interrupted export")


def _commit(tmp: Path, out: Path) -> None:
    """tmp becomes OUT. Its files and the folder itself are fsynced first, so that no crash can
    leave OUT naming a folder whose contents are not on disk yet; the parent folder is fsynced after
    each rename, so that they reach the disk in order. An existing OUT is moved aside first
    (OUT -> .OUT.old-PID, tmp -> OUT) and removed last: killed between the renames, the old OUT
    waits beside the missing one for the next export to put it back (_recover)."""
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        _fsync(out.parent)
    os.rename(tmp, out)
    _fsync(out.parent)
    if old is not None:
        shutil.rmtree(old)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
