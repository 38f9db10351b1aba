"""An embedding artifact's use: texts (with a named prompt) or token-id lists -> unit vectors,
cut to fewer dimensions (Matryoshka) and normalized again where asked. Rows are run in batches of
similar length (batches()), each right-padded to its longest; onnxruntime sessions run
concurrently, so an Embedder is shared by threads without a lock."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from gemma_runtime.backends.ort_session import create_session
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from gemma_runtime.interface import ATTENTION_MASK, EMBEDDINGS, INPUT_IDS
from gemma_runtime.manifest import EmbeddingSpec, Manifest
from gemma_runtime.tokenizer import Tokenizer

Text = Union[str, Sequence[int]]
MAX_BATCH = 32  # rows per graph run
# A run's rows are padded to its longest: a batch closes where padding would exceed this share of its
# tokens, once it holds FULL_TOKENS (fewer tokens per run than that leave the matrix products short).
PADDING_SHARE, FULL_TOKENS = 0.15, 256


@dataclasses.dataclass
class Embeddings:
    vectors: np.ndarray  # [texts, dimensions] float32, unit length
    token_counts: list[int]  # each text's tokens, prompt and framing included


class Embedder:
    def __init__(self, folder: Path, manifest: Manifest, tokenizer: Tokenizer | None, threads: int | None,
                 device: str = "cpu"):
        self.spec: EmbeddingSpec = manifest.embedding
        self.session = create_session(folder / manifest.embedder.file, threads, device)
        self.tokenizer = tokenizer
        self.max_seq_len = manifest.kv_cache.max_seq_len
        self.vocab = manifest.config["text"]["vocab_size"]
        self.pad_id = manifest.tokens.pad

    def embed(self, texts: Sequence[Text], prompt_name: str | None = None, dimensions: int | None = None) -> Embeddings:
        """texts: strings (the prompt before each, framed as the checkpoint's tokenizer frames it)
        or token-id lists (used as given)."""
        dims = self.check_dimensions(dimensions)
        rows = [self.token_ids(t, prompt_name) for t in texts]
        vectors = np.zeros((len(rows), self.spec.dimensions), np.float32)
        for batch in batches([len(r) for r in rows]):
            vectors[batch] = self.run([rows[i] for i in batch])
        if dims < self.spec.dimensions:
            vectors = vectors[:, :dims]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embeddings(vectors, [len(r) for r in rows])

    def run(self, rows: list[list[int]]) -> np.ndarray:
        """The graph over rows of checked token ids, right-padded to the longest."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for r, row in enumerate(rows):
            ids[r, :len(row)], mask[r, :len(row)] = row, 1
        (out,) = self.session.run([EMBEDDINGS], {INPUT_IDS: ids, ATTENTION_MASK: mask})
        return out.astype(np.float32, copy=False)

    def check_dimensions(self, dimensions: int | None) -> int:
        full = self.spec.dimensions
        if dimensions is None:
            return full
        if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)) or not 1 <= dimensions <= full:
            raise RuntimeInputError(f"dimensions must be an integer from 1 to {full}, got {dimensions!r}")
        return int(dimensions)

    def prompt(self, prompt_name: str | None) -> str:
        name = prompt_name if prompt_name is not None else self.spec.default_prompt_name
        if name is None:
            return ""
        if name not in self.spec.prompts:
            known = ", ".join(self.spec.prompts) or "none"
            raise RuntimeInputError(f"unknown prompt name {name!r} (this model's prompts: {known})")
        return self.spec.prompts[name]

    def token_ids(self, text: Text, prompt_name: str | None = None) -> list[int]:
        """One input as checked token ids: text with its prompt, tokenized and framed; or ids as given."""
        if isinstance(text, str):
            if not text:
                raise RuntimeInputError("empty input text")
            if self.tokenizer is None:
                raise RuntimeInputError("the artifact has no tokenizer: pass token ids")
            ids = [*self.spec.prefix_ids, *self.tokenizer.encode(self.prompt(prompt_name) + text, add_bos=False),
                   *self.spec.suffix_ids]
        elif isinstance(text, (list, tuple, np.ndarray)):
            if prompt_name is not None:
                raise RuntimeInputError("a prompt name applies to text inputs, not token ids")
            if len(text) == 0:
                raise RuntimeInputError("empty input: no token ids")
            odd = next((i for i in text if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))),
                       None)
            if odd is not None:
                raise RuntimeInputError(f"token ids must be integers, got {odd!r} ({type(odd).__name__})")
            ids = [int(i) for i in text]
            bad = [i for i in ids if not 0 <= i < self.vocab]
            if bad:
                raise RuntimeInputError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab - 1})")
        else:
            raise RuntimeInputError(f"an input is text or a list of token ids, not {type(text).__name__}")
        if len(ids) > self.max_seq_len:
            raise ContextLengthExceeded(f"an input has {len(ids)} tokens; this artifact's maximum is "
                                        f"{self.max_seq_len}")
        return ids


def batches(lengths: list[int]) -> list[list[int]]:
    """Row indices grouped into graph runs: shortest first, at most MAX_BATCH rows each, a new run
    where the next (longer) row would pad this one beyond PADDING_SHARE of its tokens."""
    runs: list[list[int]] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        run = runs[-1] if runs else None
        if run is not None and len(run) < MAX_BATCH and (
                real < FULL_TOKENS or (len(run) + 1) * lengths[i] <= (real + lengths[i]) * (1 + PADDING_SHARE)):
            run.append(i)
            real += lengths[i]
        else:
            runs.append([i])
            real = lengths[i]
    return runs
