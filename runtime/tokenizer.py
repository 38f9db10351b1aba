"""SentencePiece tokenizer with Gemma's rules: BOS added exactly once to text."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from gemma_runtime.errors import RuntimeInputError


class Tokenizer:
    def __init__(self, model_file: Path | str, bos_id: int):
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(Path(model_file).read_bytes())
        except (OSError, RuntimeError) as e:
            raise RuntimeInputError(f"{model_file}: not a SentencePiece model ({e})") from None
        self.bos_id = bos_id  # the model's (manifest), whatever the piece names in the proto
        self.vocab_size = self._sp.get_piece_size()

    def token_id(self, piece: str) -> int | None:
        """The id of a whole piece such as '<end_of_turn>', or None if the vocabulary lacks it."""
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._sp.encode(text)
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])
