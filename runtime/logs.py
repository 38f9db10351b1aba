"""The runtime's logging: every module logs to logging.getLogger(__name__), under "gemma_runtime";
configure_logging gives that tree a level and a stderr handler (the server does, from
`gemma-export serve --log-level`). A library user configures logging as they like instead."""

from __future__ import annotations

import logging

from gemma_runtime.errors import RuntimeInputError

LOG_LEVELS = ("debug", "info", "warning", "error")
ROOT = "gemma_runtime"


def configure_logging(level: str) -> None:
    """The gemma_runtime loggers at `level` (one of LOG_LEVELS), to stderr."""
    if level not in LOG_LEVELS:
        raise RuntimeInputError(f"unknown log level {level!r} (levels: {', '.join(LOG_LEVELS)})")
    root = logging.getLogger(ROOT)
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
