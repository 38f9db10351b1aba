"""Errors the user caused (bad input, bad options): the CLI prints them on one line, exit code 2."""


class GemmaExportError(Exception):
    """A problem with the user's input or options; the message says what and where."""


class CheckpointError(GemmaExportError):
    """The checkpoint is missing, corrupt, truncated or does not match its config."""


class ConfigError(GemmaExportError):
    """A config field is unknown, unreadable or not supported."""
