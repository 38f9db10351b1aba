"""Gemma's tokenizer as the artifact holds it: a SentencePiece model (tokenizer.model, Gemma 1-3)
or an HF tokenizer.json (Gemma 4 ships only that; read with the `tokenizers` package, which keeps
the runtime torch-free). BOS is added exactly once to text."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from gemma_runtime.errors import RuntimeInputError

SENTENCEPIECE_FILE, TOKENIZER_JSON_FILE = "tokenizer.model", "tokenizer.json"
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback
WORD_MARK = "\u2581"  # SentencePiece's space
MARKER_PIECE = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")  # <start_of_turn>, <unused0>, [multimodal], <table>


class Tokenizer:
    def __init__(self, file_name: str, data: bytes, bos_id: int, where: str = "tokenizer"):
        """file_name: tokenizer.model (SentencePiece) or tokenizer.json (HF tokenizers)."""
        self.bos_id = bos_id  # the model's (manifest), whatever the piece names in the file
        self._hf = self._sp = None
        try:
            if file_name == TOKENIZER_JSON_FILE:
                import tokenizers

                self._hf = tokenizers.Tokenizer.from_str(data.decode())
                self.vocab_size = self._hf.get_vocab_size()
            else:
                import sentencepiece as spm

                self._sp = spm.SentencePieceProcessor()
                self._sp.LoadFromSerializedProto(data)
                self.vocab_size = self._sp.get_piece_size()
        except Exception as e:  # each library raises its own types
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeInputError(f"{where}: not a {file_name} tokenizer ({detail})") from None

    @classmethod
    def in_folder(cls, folder: Path | str, bos_id: int) -> "Tokenizer | None":
        """The folder's tokenizer.model, else its tokenizer.json, else None."""
        for name in (SENTENCEPIECE_FILE, TOKENIZER_JSON_FILE):
            path = Path(folder) / name
            if path.is_file():
                try:
                    data = path.read_bytes()
                except OSError as e:
                    raise RuntimeInputError(f"{path}: unreadable ({e})") from None
                return cls(name, data, bos_id, str(path))
        return None

    def token_id(self, piece: str) -> int | None:
        """The id of a whole piece such as '<end_of_turn>', or None if the vocabulary lacks it."""
        if self._hf is not None:
            return self._hf.token_to_id(piece)
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i

    def piece(self, token_id: int) -> str:
        """The vocabulary's piece for an id, as written in the tokenizer file."""
        return self._hf.id_to_token(token_id) if self._hf is not None else self._sp.id_to_piece(token_id)

    @functools.cached_property
    def longest_piece_chars(self) -> int:
        """The most characters of text one token can stand for: the vocabulary's longest piece (a
        byte-fallback piece counts as one, its byte being at most one character's UTF-8; a word
        mark as the one space it stands for). With Gemma's tokenizers, which never shrink text
        before splitting it (identity normalization, byte fallback), a text of n characters is at
        least ceil(n / longest_piece_chars) tokens. Computed once, on first use."""
        pieces = self._hf.get_vocab() if self._hf is not None else map(self._sp.id_to_piece, range(self.vocab_size))
        return max(1, max((1 if BYTE_PIECE.fullmatch(p) else len(p) for p in pieces), default=1))

    def token_bytes(self, token_id: int) -> bytes:
        """The text one token stands for, as bytes (as OpenAI's logprobs give them): a byte-fallback
        piece's one byte, else the piece with its word marks as spaces (control pieces as written,
        b"<bos>")."""
        piece = self.piece(token_id)
        byte = BYTE_PIECE.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        return piece.replace(WORD_MARK, " ").encode()

    def marker_ids(self) -> set[int]:
        """The ids of pieces that mark structure rather than spell text: SentencePiece's control and
        unknown pieces, tokenizer.json's special added tokens, and every piece written as a bracketed
        name (Gemma's user-defined <start_of_turn>, <unused0>, [multimodal], and its HTML-tag pieces,
        whose text other pieces spell too)."""
        if self._hf is not None:
            ids = {i for i, token in self._hf.get_added_tokens_decoder().items() if token.special}
        else:
            ids = {i for i in range(self.vocab_size) if self._sp.is_control(i) or self._sp.is_unknown(i)}
        pieces = enumerate(map(self.piece, range(self.vocab_size)))
        return ids | {i for i, p in pieces if MARKER_PIECE.fullmatch(p) and not BYTE_PIECE.fullmatch(p)}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._hf.encode(text, add_special_tokens=False).ids if self._hf is not None else self._sp.encode(text)
        return [self.bos_id, *ids] if add_bos else list(ids)

    def decode(self, ids: list[int]) -> str:
        ids = [int(i) for i in ids]
        return self._hf.decode(ids, skip_special_tokens=False) if self._hf is not None else self._sp.decode(ids)
