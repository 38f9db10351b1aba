"""The runtime logs through `logging`: an engine step that fails is logged with its traceback and
its requests get the error event; request errors are logged at their level (4xx info, 429
warning, 5xx error); `gemma-export serve --log-level` sets the level of the gemma_runtime loggers
and uvicorn's, and refuses an unknown level in one line."""

import logging
import shutil

import pytest
import uvicorn

import gemma_runtime
from cli_util import cli
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime import server
from gemma_runtime.engine import Engine
from gemma_runtime.logs import ROOT


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("logging") / "out"
    export(shutil.copytree(tiny_checkpoints["gemma-mqa"], out.parent / "ckpt"), out,
           ExportOptions(target="ort-cpu", max_seq_len=32))
    return out


def test_an_engine_failure_is_logged_with_its_traceback(artifact, caplog, monkeypatch):
    engine = Engine(gemma_runtime.load(artifact, threads=1), max_batch=2)

    def broken(*args, **kwargs):
        raise RuntimeError("the device went away")

    monkeypatch.setattr(engine.model.backend, "step", broken)
    with caplog.at_level(logging.ERROR, logger=ROOT):
        engine.start()
        try:
            request = engine.submit(engine.request([2, 5, 6], max_new_tokens=4))
            events = [request.events.get(timeout=60)]
        finally:
            engine.stop()
    assert [(e.text, e.finish_reason) for e in events] == [("RuntimeError: the device went away", "error")]
    failures = [r for r in caplog.records if r.name == "gemma_runtime.engine"]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert failures[0].exc_info[0] is RuntimeError and "1 requests in flight" in failures[0].getMessage()


def test_request_errors_are_logged_at_their_level(caplog):
    with caplog.at_level(logging.DEBUG, logger=ROOT):
        for status in (400, 429, 500):
            server.log_error(server.ApiError(status, f"status {status}"))
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("gemma_runtime.server", logging.INFO, "400 invalid_request_error: status 400"),
        ("gemma_runtime.server", logging.WARNING, "429 invalid_request_error: status 429"),
        ("gemma_runtime.server", logging.ERROR, "500 invalid_request_error: status 500")]


def test_serve_log_level_sets_the_runtime_and_uvicorn_levels(artifact, capsys, monkeypatch):
    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.update(kwargs))
    runtime_logger = logging.getLogger(ROOT)
    handlers = list(runtime_logger.handlers)
    try:
        code, _, err = cli(capsys, "serve", str(artifact), "--log-level", "debug", "--max-batch", "1")
        assert code == 0, err
        assert ran["log_level"] == "debug" and runtime_logger.level == logging.DEBUG
    finally:
        runtime_logger.setLevel(logging.NOTSET)
        runtime_logger.handlers = handlers
    code, _, err = cli(capsys, "serve", str(artifact), "--log-level", "verbose")
    assert code == 2 and err.strip() == "error: --log-level 'verbose': one of debug, info, warning, error"
