"""A backend without row views, as the trt backend is, made from an onnxruntime one: every call runs
every reserved row, idle rows padded. The Engine's padded steps are tested with it on the CPU."""

from __future__ import annotations

import dataclasses

from gemma_runtime.backends.protocol import pad_rows, step_arrays


class PaddedBackend:
    def __init__(self, inner):
        self.inner = inner
        self.capabilities = dataclasses.replace(inner.capabilities, row_views=False)
        self.max_seq_len = inner.max_seq_len

    def reserve(self, rows: int) -> None:
        self.inner.reserve(rows)

    def copy_row(self, source: int, target: int) -> None:
        self.inner.copy_row(source, target)

    def step(self, ids, past, seq, keep=None, first_row=0, spliced=None):
        assert first_row == 0, "a padded backend runs every reserved row"
        ids, past, seq, keep = step_arrays(ids, past, seq, keep)
        rows, reserved = len(ids), self.inner.reserved
        ids, past, seq, keep = pad_rows(reserved, ids, past, seq, keep, self.inner.pad_id)
        if spliced is not None:
            spliced = [*spliced, *[None] * (reserved - rows)]
        return self.inner.step(ids, past, seq, keep, spliced=spliced)[:rows]


def padded(model):
    """The model, its backend made a padded one."""
    model.backend = PaddedBackend(model.backend)
    return model
