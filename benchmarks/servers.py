"""Starting a server for a benchmark: our `gemma-export serve` or llama.cpp's `llama-server` (built from
source) on a free local port, alone with every core, stopped when the benchmark is done with it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

THREADS = os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=5) as r:  # not up yet
            if r.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def llama_server_command(server: str, slots: int, context_per_slot: int) -> list[str]:
    """llama-server on the default model's GGUF (Q4_K_M) with continuous batching over `slots` slots.
    Prompt caching is its default (each request's cache_prompt, a slot chosen by prompt similarity)."""
    from gemma_export.checkpoints.default_model import default_gguf_path

    return [server, "-m", str(default_gguf_path()), "-np", str(slots), "-cb", "-c", str(context_per_slot * slots),
            "-t", str(THREADS), "--log-disable"]


def ours_command(artifact: Path, max_batch: int) -> list[str]:
    root = Path(__file__).resolve().parents[1]
    return [str(root / ".venv" / "bin" / "gemma-export"), "serve", str(artifact), "--max-batch", str(max_batch),
            "--threads", str(THREADS)]


@contextlib.contextmanager
def running(command: list[str]) -> Iterator[str]:
    """Starts `command` listening on a free local port; yields its base URL once /health answers."""
    port = free_port()
    # its log goes to a file (a pipe nobody reads would fill and stall it); shown if it fails to start
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command + ["--host", "127.0.0.1", "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, process)
            except RuntimeError:
                log.seek(0)
                raise RuntimeError(f"{command[0]} did not start:\n{log.read()[-2000:].decode(errors='replace')}")
            yield url
        finally:
            process.terminate()
            process.wait(60)
