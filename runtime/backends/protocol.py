"""What every backend is to the runtime: one decode step over cache rows it keeps, and the
capabilities it declares. Model.generate/stream/logits and the Engine drive only this; nothing
asks a backend what it has (no hasattr).

step(ids, past, seq, keep, first_row, spliced) runs rows first_row .. first_row + len(ids) of the
rows reserve() made: row b feeds ids[b, :seq[b]] (right-padded, any pad id) at positions past[b]
..., and returns the logits of its columns keep[b] ([rows, k, vocab] float32; keep None: each row's
last fed token, k = 1). A row fed at past 0 starts a new sequence and overwrites what it reads.
spliced: per row, the embeddings that replace some of its columns (interface.Splice), for a
decoder that declares interface.MEDIA_INPUTS. copy_row(source, target) makes row target's cache a
copy of row source's (a backend that keeps rows; the Engine's choices of one prompt share its
prefill so).

rewind(row, length) drops what the row's last call wrote at positions >= length (speculative
decoding's rejected drafts): a full-length cache needs nothing (the next call overwrites them), a
window-sized ring gets back the slots they overwrote, a growing cache is cut (one row only).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import SPLICED_EMBEDS, Splice, spliced_feeds
from gemma_runtime.manifest import Manifest


@dataclasses.dataclass(frozen=True)
class Capabilities:
    keeps_rows: bool  # each row's cache survives across calls, whatever the other rows do
    row_views: bool  # a call over a subset of rows costs only those rows (else it runs every row reserved)
    devices: tuple[str, ...]  # where the step computes
    max_batch: int | None  # the most rows reserve() accepts; None: unbounded


class Backend(Protocol):
    capabilities: Capabilities
    max_seq_len: int

    def reserve(self, rows: int) -> None:
        """Zeroed cache rows for the calls to come (kept as they are when `rows` is unchanged)."""

    def step(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray | None = None,
             first_row: int = 0, spliced: Sequence[Splice | None] | None = None) -> np.ndarray:
        """[rows, k, vocab] float32 logits; see the module docstring."""

    def copy_row(self, source: int, target: int) -> None:
        """Row target's cache becomes a copy of row source's."""

    def rewind(self, row: int, length: int) -> None:
        """The row's cache as if its last call had fed only up to position length; see the module docstring."""


def step_arrays(ids, past, seq, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The step's int64 arrays, keep defaulting to each row's last fed column."""
    ids, past, seq = (np.ascontiguousarray(a, np.int64) for a in (ids, past, seq))
    keep = (seq - 1)[:, None] if keep is None else np.ascontiguousarray(keep, np.int64)
    if ids.ndim != 2 or past.shape != (len(ids),) or seq.shape != (len(ids),) or keep.ndim != 2 \
            or len(keep) != len(ids):
        raise RuntimeInputError(f"a step takes ids [rows, width], past and seq [rows], keep [rows, k]; got "
                                f"{ids.shape}, {past.shape}, {seq.shape}, {keep.shape}")
    return ids, past, seq, keep


def check_rows(first_row: int, rows: int, reserved: int) -> None:
    if rows < 1 or first_row < 0 or first_row + rows > reserved:
        raise RuntimeInputError(f"a step over rows {first_row}..{first_row + rows - 1}, but {reserved} are reserved")


def check_copy(source: int, target: int, reserved: int) -> None:
    if not (0 <= source < reserved and 0 <= target < reserved):
        raise RuntimeInputError(f"a copy from row {source} to row {target}, but {reserved} are reserved")


def check_length(past: np.ndarray, width: int, max_seq_len: int) -> None:
    if int((past + width).max()) > max_seq_len:
        raise RuntimeInputError(f"the sequence would exceed this artifact's maximum length {max_seq_len}")


def check_reserve(rows: int, max_batch: int | None, hint: str = "") -> None:
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise RuntimeInputError(f"reserve takes a number of rows >= 1, got {rows!r}")
    if max_batch is not None and rows > max_batch:
        raise RuntimeInputError(f"batch {rows} is larger than this engine's maximum ({max_batch}){hint}")


def pad_rows(rows: int, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray, pad_id: int):
    """The arrays padded with idle rows (a pad token at position 0) up to `rows`: for backends
    whose calls run every reserved row."""
    return pad_to(ids, rows, pad_id), pad_to(past, rows, 0), pad_to(seq, rows, 1), pad_to(keep, rows, 0)


def pad_to(array: np.ndarray, rows: int, value: int) -> np.ndarray:
    """array with rows of `value` appended up to `rows`."""
    if len(array) == rows:
        return array
    return np.pad(array, [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1), constant_values=value)


_FLOAT_TYPES = {"float": np.float32, "float16": np.float16}  # the manifest's dtype names


class MediaInputs:
    """The decoder's spliced-embeddings inputs as the manifest declares them (or their absence)."""

    def __init__(self, manifest: Manifest):
        spec = manifest.decoder.inputs.get(SPLICED_EMBEDS)
        self.declared = spec is not None
        if self.declared:
            if spec.dtype not in _FLOAT_TYPES or not isinstance(spec.shape[-1], int):
                raise RuntimeInputError(f"the decoder's {SPLICED_EMBEDS} is {spec.dtype} {list(spec.shape)}: this "
                                        f"runtime feeds {', '.join(_FLOAT_TYPES)} with a fixed hidden size")
            self.hidden, self.dtype = spec.shape[-1], np.dtype(_FLOAT_TYPES[spec.dtype])

    def feeds(self, spliced: Sequence[Splice | None] | None, rows: int, width: int) -> dict[str, np.ndarray]:
        """{} for a decoder without media inputs (refusing splices), else its MEDIA_INPUTS."""
        given = spliced is not None and any(s is not None for s in spliced)
        if not self.declared:
            if given:
                raise RuntimeInputError(f"this artifact's decoder takes token ids only (it has no {SPLICED_EMBEDS} "
                                        "input): it cannot splice embeddings")
            return {}
        spliced = [None] * rows if spliced is None else list(spliced)
        if len(spliced) != rows:
            raise RuntimeInputError(f"spliced embeddings for {len(spliced)} rows in a step of {rows}")
        for row, s in enumerate(spliced):
            if s is None:
                continue
            columns, embeds = np.asarray(s.columns), np.asarray(s.embeds)
            if columns.ndim != 1 or embeds.shape != (len(columns), self.hidden):
                raise RuntimeInputError(f"row {row}: a splice takes columns [n] and embeds [n, {self.hidden}], got "
                                        f"{columns.shape} and {embeds.shape}")
            if len(columns) and not (0 <= columns.min() and columns.max() < width):
                raise RuntimeInputError(f"row {row}: spliced columns {columns.tolist()} outside the call's "
                                        f"{width} columns")
            if s.lookahead is not None:
                ahead = np.asarray(s.lookahead)
                if ahead.shape != columns.shape or (len(ahead) and ((ahead < 0).any() or (columns + ahead).max() >= width)):
                    raise RuntimeInputError(f"row {row}: a splice's lookahead must be [n] non-negative and stay "
                                            f"within the call's {width} columns (an image is never split across calls)")
        return spliced_feeds(spliced, self.hidden, self.dtype, width)
