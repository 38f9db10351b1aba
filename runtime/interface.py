"""The contract between the compiler and the runtime: the names of a graph's inputs and outputs,
what they mean, the KV-cache tensor type, and the function that builds a step's feeds.

The model definition, the compiler passes, calibration, sensitivity, bisect, every backend and the
test harness import these names; none of them spells one out. Torch-free, and it imports nothing
from the project, so both sides can depend on it.

An artifact is a set of named graphs, each with a role (ROLES). The decoder's interface:

  traced graph and the `generic` target (the cache grows by concatenation)
    input_ids        [batch, seq] int64      the new tokens; ragged rows LEFT-padded
    position_ids     [batch, seq] int64      each token's position in its sequence
    attention_mask   [batch, past + seq]     1 for a real token, 0 for padding
    past_{cache}     [batch, kv_heads, past, head_dim]           each CacheTensor, in order
  outputs
    logits           [batch, seq, vocab] float32
    present_{cache}  [batch, kv_heads, past + seq, head_dim]

  in-place targets (ort-cpu, ort-cuda, onnx, tensorrt): static caches updated in place
    input_ids        [batch, seq] int64      the new tokens; ragged rows RIGHT-padded (any pad id)
    position_ids     [batch, seq] int64      past_lengths[b] + column
    past_lengths     [batch] int64           valid tokens already in row b's cache
    seq_lengths      [batch] int64           valid new tokens of row b in this call (1..seq)
    logits_index     [batch, keep] int64     the columns whose logits are computed
    past_{cache}     [batch, kv_heads, length, head_dim]: length is max_seq_len, or the window of
                     a sliding layer kept as a ring (position p in slot p mod window)
  outputs
    logits           [batch, keep, vocab] float32
    present_{cache}  the same buffer as past_{cache}, updated in place

A call writes row b's new keys and values at positions past_lengths[b] .. past_lengths[b] +
seq_lengths[b] - 1 and attends to the positions before past_lengths[b] + seq_lengths[b]; padded
columns may write after them (never read; the row's next tokens overwrite them), so
past_lengths[b] + seq <= max_seq_len. Cache entries beyond the valid lengths are still read by some
kernels (masked by addition) and so must be finite: a buffer is zeroed once, when allocated.

A decoder that takes media (images, audio) has three more inputs, after attention_mask (traced)
or logits_index (in-place): an encoder's output rows (`spliced_embeds`, [batch, spliced, hidden],
the decoder's float dtype), the column of input_ids each replaces (`spliced_columns`, [batch,
spliced] int64, -1 for an unused row), and `lookahead` ([batch, seq] int64): how many columns
after it a column's query also sees (0 for a text token; for the k-th of an image's n tokens,
n - 1 - k, so that an image's tokens see each other both ways, as transformers' Gemma 3 and 4
masks let them; an image is never split across calls). The decoder embeds input_ids as usual and
then overwrites column spliced_columns[b, i] of row b with spliced_embeds[b, i]; the token id in
such a column is the model's placeholder and is looked up as the pad token. A call that splices
nothing feeds spliced = 0 ([batch, 0, hidden] and [batch, 0]) and zero lookahead. The runtime
passes a step one Splice (or None) per row and builds these inputs with spliced_feeds.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# -- graph roles: the graphs an artifact may hold ---------------------------------------------------
DECODER = "decoder"  # token ids (and spliced embeddings) + KV cache -> logits
IMAGE_ENCODER = "image_encoder"  # pixels -> soft tokens for the decoder's spliced_embeds
AUDIO_ENCODER = "audio_encoder"  # audio features -> soft tokens
DRAFTER = "drafter"  # a small decoder proposing tokens for speculative decoding
EMBEDDING_HEAD = "embedding_head"  # token ids -> one pooled embedding per sequence
ROLES = (DECODER, IMAGE_ENCODER, AUDIO_ENCODER, DRAFTER, EMBEDDING_HEAD)

# -- the decoder's inputs and outputs -------------------------------------------------------------
INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
ATTENTION_MASK = "attention_mask"
PAST_LENGTHS = "past_lengths"
SEQ_LENGTHS = "seq_lengths"
LOGITS_INDEX = "logits_index"
SPLICED_EMBEDS = "spliced_embeds"
SPLICED_COLUMNS = "spliced_columns"
LOOKAHEAD = "lookahead"
LOGITS = "logits"

# -- the embedding model's graph (role EMBEDDING_HEAD) ----------------------------------------------
#   input_ids        [batch, seq] int64      ragged rows RIGHT-padded (any pad id)
#   attention_mask   [batch, seq] int64      1 for a real token, 0 for padding
# output
#   embeddings       [batch, dimensions] float32, unit length (the pooled, dense-projected sequence)
EMBEDDINGS = "embeddings"
EMBEDDING_INPUT_NAMES = (INPUT_IDS, ATTENTION_MASK)

# -- an encoder's outputs (its inputs are named as transformers' processor names its arrays) --------
SOFT_TOKENS = "soft_tokens"  # [items, tokens, text hidden]: the rows for the decoder's spliced_embeds
SOFT_TOKEN_MASK = "soft_token_mask"  # [items, tokens] bool, where an item has fewer real tokens than others

TRACED_INPUTS = (INPUT_IDS, POSITION_IDS, ATTENTION_MASK)  # before the caches, in this order
INPLACE_INPUTS = (INPUT_IDS, POSITION_IDS, PAST_LENGTHS, SEQ_LENGTHS, LOGITS_INDEX)
MEDIA_INPUTS = (SPLICED_EMBEDS, SPLICED_COLUMNS, LOOKAHEAD)  # after the inputs above, in this order

PAST_PREFIX = "past_"
PRESENT_PREFIX = "present_"

BATCH = "batch"  # the symbolic leading dim of every input, output and cache tensor
PAST_SEQUENCE = "past_sequence"  # a growing cache's symbolic length

CACHE_KINDS = ("key", "value")
CACHE_LAYOUTS = ("concat", "full", "ring")  # growing; max_seq_len positions; a ring of `window` slots
CACHE_DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}  # dtype -> bytes per element


@dataclasses.dataclass(frozen=True)
class CacheTensor:
    """One KV-cache tensor: graph input past_{name} and output present_{name}, [batch, kv_heads,
    length, head_dim]. Written by one layer, read by it and any layer sharing it. The model
    definition makes it growing and fp32; the export records the form the final graph gives it."""

    name: str
    kind: str  # see CACHE_KINDS
    shape: tuple[int | str, ...]  # (BATCH, kv_heads, length, head_dim); a str is a symbolic dim
    written_by: tuple[int, ...]  # layers
    read_by: tuple[int, ...]
    dtype: str = "fp32"  # see CACHE_DTYPES
    layout: str = "concat"  # see CACHE_LAYOUTS

    def __post_init__(self):
        if self.kind not in CACHE_KINDS:
            raise ValueError(f"cache {self.name}: kind {self.kind!r} (kinds: {', '.join(CACHE_KINDS)})")
        if self.layout not in CACHE_LAYOUTS:
            raise ValueError(f"cache {self.name}: layout {self.layout!r} (supported: {', '.join(CACHE_LAYOUTS)})")
        if self.dtype not in CACHE_DTYPES:
            raise ValueError(f"cache {self.name}: dtype {self.dtype!r} (supported: {', '.join(CACHE_DTYPES)})")
        if len(self.shape) != 4:
            raise ValueError(f"cache {self.name}: shape {self.shape} is not [batch, kv_heads, length, head_dim]")

    @classmethod
    def growing(cls, name: str, kind: str, kv_heads: int, head_dim: int, written_by: tuple[int, ...],
                read_by: tuple[int, ...]) -> CacheTensor:
        return cls(name, kind, (BATCH, kv_heads, PAST_SEQUENCE, head_dim), written_by, read_by)

    @property
    def input_name(self) -> str:
        return PAST_PREFIX + self.name

    @property
    def output_name(self) -> str:
        return PRESENT_PREFIX + self.name

    @property
    def kv_heads(self) -> int:
        return self.shape[1]

    @property
    def length(self) -> int | str:
        return self.shape[2]

    @property
    def head_dim(self) -> int:
        return self.shape[3]

    def nbytes(self, batch: int) -> int:
        """Bytes of a static buffer for `batch` rows."""
        return batch * self.kv_heads * self.length * self.head_dim * CACHE_DTYPES[self.dtype]


def decoder_input_names(caches: tuple[CacheTensor, ...] | list[CacheTensor], media: bool = False) -> list[str]:
    """The traced decoder's inputs, in its forward's order."""
    return [*TRACED_INPUTS, *(MEDIA_INPUTS if media else ()), *(c.input_name for c in caches)]


def decoder_output_names(caches: tuple[CacheTensor, ...] | list[CacheTensor]) -> list[str]:
    return [LOGITS, *(c.output_name for c in caches)]


def inplace_feeds(ids: np.ndarray, past: np.ndarray, seq: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """An in-place decoder call's int64 inputs: row b feeds ids[b, :seq[b]] at positions past[b]...,
    and the logits of columns keep[b] come back."""
    ids, past, seq, keep = (np.ascontiguousarray(a, np.int64) for a in (ids, past, seq, keep))
    return {INPUT_IDS: ids, POSITION_IDS: past[:, None] + np.arange(ids.shape[1], dtype=np.int64),
            PAST_LENGTHS: past, SEQ_LENGTHS: seq, LOGITS_INDEX: keep}


def concat_feeds(ids: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """A growing-cache decoder call's inputs, before its past caches."""
    return {INPUT_IDS: np.ascontiguousarray(ids, np.int64), POSITION_IDS: np.ascontiguousarray(positions, np.int64),
            ATTENTION_MASK: np.ascontiguousarray(mask, np.int64)}


@dataclasses.dataclass(frozen=True)
class Splice:
    """Embeddings that replace some columns of one row of a step's input_ids, and the lookahead
    of those columns (None: 0, as for audio; an image's tokens see the rest of the image)."""

    columns: np.ndarray  # [n] int64: columns of the row's ids in this call
    embeds: np.ndarray  # [n, hidden]
    lookahead: np.ndarray | None = None  # [n] int64


def spliced_feeds(splices: Sequence[Splice | None], hidden: int, dtype: np.dtype, width: int) -> dict[str, np.ndarray]:
    """A media decoder's MEDIA_INPUTS for one Splice (or None) per row of a call `width` columns
    wide, padded to the most columns any row splices with unused entries (column -1, zero embeds)."""
    n = max((len(s.columns) for s in splices if s is not None), default=0)
    embeds = np.zeros((len(splices), n, hidden), dtype)
    columns = np.full((len(splices), n), -1, np.int64)
    lookahead = np.zeros((len(splices), width), np.int64)
    for row, splice in enumerate(splices):
        if splice is not None:
            embeds[row, :len(splice.columns)] = splice.embeds
            columns[row, :len(splice.columns)] = splice.columns
            if splice.lookahead is not None:
                lookahead[row, splice.columns] = splice.lookahead
    return {SPLICED_EMBEDS: embeds, SPLICED_COLUMNS: columns, LOOKAHEAD: lookahead}
