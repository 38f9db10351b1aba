"""The growing KV cache (targets `generic`, `openvino`) on any runtime's session: each step's
present becomes the next step's past. Ragged new sequences are padded on the left and masked, so
the rows' caches are one tensor and cannot advance apart: a step starts a new sequence in every reserved row (past 0) or
continues them all by the same number of tokens (capabilities: keeps_rows False)."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from gemma_runtime.backends.protocol import Capabilities, MediaInputs, check_length, check_reserve, step_arrays
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import LOGITS, LOOKAHEAD, SPLICED_COLUMNS, Splice, concat_feeds
from gemma_runtime.manifest import Manifest

_NP = {"fp32": np.float32, "fp16": np.float16}


class GraphSession(Protocol):
    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs of one run of the decoder graph (onnxruntime's InferenceSession.run)."""


class ConcatCacheBackend:
    def __init__(self, session: GraphSession, manifest: Manifest, device: str):
        self.session = session
        self.capabilities = Capabilities(keeps_rows=False, row_views=False, devices=(device,), max_batch=None)
        self.max_seq_len = manifest.kv_cache.max_seq_len
        self.pad_id = manifest.tokens.pad
        self.buffers = manifest.kv_cache.buffers
        self.media = MediaInputs(manifest)
        self.output_names = [LOGITS, *(b.output_name for b in self.buffers)]
        self.reserved = 0
        self.lengths = np.zeros(0, np.int64)  # each row's tokens in the cache
        self.cache: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), np.int64)

    def reserve(self, rows: int) -> None:
        check_reserve(rows, None)
        self.reserved = rows
        self.lengths = np.zeros(0, np.int64)

    def copy_row(self, source: int, target: int) -> None:
        raise RuntimeInputError("the growing-cache backend (targets generic, openvino) keeps no row apart: it cannot "
                                "copy one")

    def step(self, ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray | None = None,
             first_row: int = 0, spliced: Sequence[Splice | None] | None = None) -> np.ndarray:
        ids, past, seq, keep = step_arrays(ids, past, seq, keep)
        rows, width = ids.shape
        starting = not past.any()
        continuing = np.array_equal(past, self.lengths) and bool((seq == width).all())
        if first_row or rows != self.reserved or not (starting or continuing):
            raise RuntimeInputError(
                "the growing-cache backend (targets generic, openvino) keeps no row apart: a step starts a new sequence in "
                "every reserved row (past 0) or continues them all by the same number of tokens; continuous "
                "batching and ragged steps need an in-place artifact (targets ort-cpu, ort-cuda, onnx)")
        check_length(past, width, self.max_seq_len)
        media = self.media.feeds(spliced, rows, width)
        offset = width - seq if starting else np.zeros(rows, np.int64)  # left padding of a new sequence
        if starting:
            shifted = np.full_like(ids, self.pad_id)
            self.mask = np.zeros_like(ids)
            for r in range(rows):
                shifted[r, offset[r]:] = ids[r, :seq[r]]
                self.mask[r, offset[r]:] = 1
            ids, positions = shifted, np.maximum(np.cumsum(self.mask, axis=1) - 1, 0)
            self.cache = [np.zeros((rows, b.shape[1], 0, b.shape[3]), _NP[b.dtype]) for b in self.buffers]
        else:
            self.mask = np.concatenate([self.mask, np.ones_like(ids)], axis=1)
            positions = past[:, None] + np.arange(width, dtype=np.int64)
        if SPLICED_COLUMNS in media:
            columns, ahead = media[SPLICED_COLUMNS], media[LOOKAHEAD]
            media[SPLICED_COLUMNS] = np.where(columns >= 0, columns + offset[:, None], -1)
            media[LOOKAHEAD] = np.zeros_like(ahead)
            for r in range(rows):
                media[LOOKAHEAD][r, offset[r]:] = ahead[r, :width - offset[r]]
        feeds = {**concat_feeds(ids, positions, self.mask), **media,
                 **{b.input_name: cache for b, cache in zip(self.buffers, self.cache)}}
        logits, *self.cache = self.session.run(self.output_names, feeds)
        self.lengths = past + seq
        return np.take_along_axis(logits, (keep + offset[:, None])[:, :, None], axis=1).astype(np.float32, copy=False)

    def rewind(self, row: int, length: int) -> None:
        """Cuts the cache back to `length` positions; the rows advance together, so only where one row
        is reserved."""
        if not 0 <= length <= (int(self.lengths[row]) if row < len(self.lengths) else -1):
            raise RuntimeInputError(f"row {row} holds {self.lengths[row] if row < len(self.lengths) else 0} "
                                    f"positions: it cannot be rewound to {length}")
        if length == self.lengths[row]:
            return
        if len(self.lengths) != 1:
            raise RuntimeInputError("the growing-cache backend (targets generic, openvino) rewinds a row only where "
                                    "it is the one reserved: speculative decoding of several prompts needs an "
                                    "in-place artifact (targets ort-cpu, ort-cuda, onnx)")
        self.cache = [c[:, :, :length] for c in self.cache]
        self.mask = self.mask[:, :length]
        self.lengths = np.asarray([length], np.int64)
