"""The artifact directory, written to a temporary folder beside OUT and moved into place only
when complete; `--force` replaces an existing OUT in the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import onnx
import onnx_ir as ir

from gemma_export.errors import GemmaExportError

from gemma_runtime.manifest import DATA_FILE, MANIFEST_FILE, MODEL_FILE


def check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise GemmaExportError(f"{out} already exists (use --force to replace it)")
    if out.exists() and not (out / MANIFEST_FILE).is_file() and any(out.iterdir()):
        raise GemmaExportError(f"{out} exists and is not an artifact; refusing to replace it")


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """Yields a temporary folder; on success it becomes OUT, on any failure it is removed."""
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model: ir.Model, folder: Path, on_tensor: Callable[[str, int, int], None] | None = None) -> None:
    """model.onnx + model.onnx.data; on_tensor(name, index, total) after each tensor. An
    initializer that is a row view of another (weights.row_view) is not written: its TensorProto
    points into the other's bytes in model.onnx.data."""

    def callback(tensor, info) -> None:
        if on_tensor:
            on_tensor(tensor.name, info.index, info.total)

    graph = model.graph
    views = {name: v for name, v in graph.initializers.items()
             if getattr(v.const_value, "view_of", None) is not None}
    for name, value in views.items():
        base, tensor, _ = value.const_value.view_of
        if base not in graph.initializers or graph.initializers[base].const_value is not tensor:
            raise AssertionError(f"{name} is a view of {base}, which a later pass replaced or removed")
    for name in views:
        graph.initializers.pop(name)
    try:
        ir.save(model, folder / MODEL_FILE, external_data=DATA_FILE, callback=callback)
    finally:
        for name, value in views.items():
            graph.initializers[name] = value
    if views:
        _add_views(folder / MODEL_FILE, views)


def _add_views(path: Path, views: dict[str, ir.Value]) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    saved = {t.name: t for t in proto.graph.initializer}
    for name, value in views.items():
        base, _, first_row = value.const_value.view_of
        source = saved.get(base)
        where = {e.key: e.value for e in source.external_data} if source is not None else {}
        if "offset" not in where:
            raise AssertionError(f"{name}: its base {base} was not written as external data")
        if source.data_type != int(value.dtype) or list(source.dims[1:]) != list(value.shape.numpy()[1:]):
            raise AssertionError(f"{name}: its rows do not match {base} as saved")
        row_bytes = value.const_value.nbytes // value.shape[0]
        tensor = onnx.TensorProto(name=name, dims=list(value.shape.numpy()), data_type=int(value.dtype),
                                  data_location=onnx.TensorProto.EXTERNAL)
        for key, val in (("location", where["location"]), ("offset", str(int(where["offset"]) + first_row * row_bytes)),
                         ("length", str(value.const_value.nbytes))):
            tensor.external_data.add(key=key, value=val)
        proto.graph.initializer.append(tensor)
    onnx.save(proto, str(path))
