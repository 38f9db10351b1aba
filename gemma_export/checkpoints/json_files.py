"""JSON files of a checkpoint (config.json, a safetensors header, a shard index), read as
untrusted input: any failure is a one-line error of the caller's choosing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gemma_export.errors import ConfigError, GemmaExportError


def parse_json(data: bytes, where: str, error: type[GemmaExportError] = ConfigError) -> Any:
    """JSON from a file that may be corrupt: any failure is `error`, and an integer beyond 64 bits
    (which no field holds) is refused before anything converts it."""
    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > 20 or not -2**63 <= int(digits) < 2**64:
            raise error(f"{where}: number {digits[:24]}{'...' if len(digits) > 24 else ''} is out of range")
        return int(digits)

    try:
        return json.loads(data, parse_int=parse_int)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8; RecursionError: deep nesting
        raise error(f"{where}: not readable JSON ({' '.join(str(e).split())})") from None


def read_json(path: Path, error: type[GemmaExportError] = ConfigError) -> Any:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: unreadable ({e})") from None
    return parse_json(data, str(path), error)
