"""Errors the user caused (bad input, bad options): the CLI prints them on one line, exit code 2."""

from typing import Iterable


class GemmaExportError(Exception):
    """A problem with the user's input or options; the message says what and where."""


class CheckpointError(GemmaExportError):
    """The checkpoint is missing, corrupt, truncated or does not match its config."""


class ConfigError(GemmaExportError):
    """A config field is unknown, unreadable or not supported."""


def names(items: Iterable[str]) -> str:
    """Names read from the input (fields, keys), joined for a message: as they are where printable,
    else as their repr, so that a name holding a newline cannot break the message's one line."""
    return ", ".join(n if n.isprintable() else repr(n) for n in items)
