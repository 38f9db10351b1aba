"""Checks of the media processing settings (frozen dataclasses): every field of its declared kind."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def as_dict(settings: Any) -> dict[str, Any]:
    """A processing dataclass as the manifest stores it: every field, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """The inverse of as_dict (a manifest's copy); an unknown key is an error naming it."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def check_types(settings: Any) -> None:
    """A processing dataclass's fields of their declared kinds (bool, int, finite float, three finite
    floats): ValueError naming the field (from_dict reads them from a manifest)."""
    for field in dataclasses.fields(settings):
        value, default = getattr(settings, field.name), field.default
        if isinstance(default, tuple):
            ok = isinstance(value, tuple) and all(_is_finite(v) for v in value)
        elif isinstance(default, bool) or isinstance(default, int):
            ok = type(value) is type(default)
        else:
            ok = _is_finite(value)
        if not ok:
            raise ValueError(f"{field.name} = {value!r} is not a {type(default).__name__} like {default!r}")


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
