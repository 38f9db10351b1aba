"""Structured outputs: a generation held to JSON (any object, or a value of a JSON schema) by a token
mask at every step, from llguidance's grammar engine (extra `[serve]`; imported only when a request
asks for JSON).

Why llguidance rather than xgrammar (benchmarks/structured.py compares them on the 270M's vocabulary
of 262144 pieces; the README has the tables):
- xgrammar 0.2.9 requires torch, transformers and triton, and imports torch when it is imported;
  this runtime never imports torch. llguidance is one abi3 wheel that needs nothing else.
- A new schema compiles in about 2 ms with llguidance, 140-340 ms with xgrammar: a server meets
  its clients' schemas as they come.
- Where llguidance cannot enforce a keyword it refuses the schema, naming it (a 400 here). xgrammar
  took uniqueItems, allOf, not and if/then/else and let values that break them through, and
  refused valid values under contains, patternProperties and dependentRequired: its output would
  not always fit the schema.
- Per token both are far under the goal of 10% of a decode step: a mask costs llguidance 0.02 ms
  (any object) to 0.5 ms (bounded strings), xgrammar 0.08-0.2 ms, against ~170 ms for the 270M's
  decode step on a 2-core CPU. llguidance's tokenizer view costs about 3 s, once.

The token view (every id's bytes, the marker pieces as special tokens a grammar never allows, the
model's stop ids as its end) is built once per JsonGrammars, which an Engine makes on first use.
A schema compiles into a matcher once, kept in a bounded LRU cache keyed by its JSON text;
each request runs a copy. JSON is written compact, with ", " and ": " as separators and no other
whitespace: a small model otherwise spends its tokens on newlines and indentation. The schema is
enforced whether or not `strict` is set.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from typing import Any, Iterable, Mapping

import numpy as np

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.tokenizer import Tokenizer

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}  # response_format json_object
# the library's compile options, over any "x-guidance" in a client's schema (its "lenient" would let
# unimplemented keywords pass unenforced)
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": False}
DEFAULT_CACHED_SCHEMAS = 64
NEG_INF_BITS = np.float32(-np.inf).view(np.int32)
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")


class StructuredOutputError(RuntimeInputError):
    """A request for structured output that cannot be served."""


class UnsupportedSchema(StructuredOutputError):
    """A schema the grammar engine cannot enforce: `features` names its keywords where the engine
    said which (empty when the schema is invalid rather than unsupported)."""

    def __init__(self, message: str, features: tuple[str, ...] = ()):
        super().__init__(message)
        self.features = features


class GrammarError(RuntimeError):
    """The grammar engine refused a token it had allowed, or failed within a step (its limits)."""


class JsonConstraint:
    """One generation's grammar state: the mask of the next token, and each token taken."""

    def __init__(self, matcher, vocab_size: int):
        self._matcher = matcher
        self._vocab = vocab_size
        self._bits = np.empty((vocab_size + 31) // 32, np.int32)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The float32 logits with every token the grammar does not allow next at -inf (a copy)."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._check()
        allowed = np.unpackbits(self._bits.view(np.uint8), count=self._vocab, bitorder="little")
        # on the bits, without branches: np.where over a 262144-wide row costs ~2 ms, this ~0.3 ms
        keep = np.subtract(0, allowed, dtype=np.int32)  # all ones where allowed
        out = np.bitwise_xor(np.asarray(logits, np.float32).view(np.int32), NEG_INF_BITS)
        out &= keep
        out ^= NEG_INF_BITS
        return out.view(np.float32)

    def copy(self) -> JsonConstraint:
        """Another constraint in this one's state (a fresh one before any token)."""
        return JsonConstraint(self._matcher.deep_copy(), self._vocab)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            self._check()
            raise GrammarError(f"the grammar refused token {token}")

    @property
    def complete(self) -> bool:
        """The grammar is at its end: no token but a stop id may follow."""
        return self._matcher.is_stopped()

    def _check(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"structured output failed: {self._matcher.get_error()}")


class JsonGrammars:
    """The grammar engine's view of one tokenizer, and the schemas compiled against it."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: Iterable[int],
                 cached_schemas: int = DEFAULT_CACHED_SCHEMAS):
        """vocab_size: the logits' width (ids past the tokenizer's pieces are never allowed);
        stop_ids: the ids that end a generation, allowed where the grammar may end."""
        try:
            import llguidance
        except ImportError:
            raise StructuredOutputError("structured outputs need the llguidance package (pip install "
                                        "'gemma-export[serve]')") from None
        self._llguidance = llguidance
        self.vocab_size = vocab_size
        stop_ids = sorted(stop_ids)
        # json_slices: the vocabulary's partition that speeds up the masks of JSON's lexemes
        self._view = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TokenView(tokenizer, vocab_size, stop_ids)),
                                            n_vocab=vocab_size, eos_token=stop_ids,
                                            slices=llguidance.LLTokenizer.json_slices())
        self._compiled: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._cached = cached_schemas
        self._lock = threading.Lock()

    def constraint(self, schema: Mapping[str, Any]) -> JsonConstraint:
        """A fresh constraint to a value of the schema (ANY_OBJECT for any JSON object); raises
        UnsupportedSchema for a schema it cannot enforce."""
        key = json.dumps(schema)  # its keys' order kept: it orders the output's
        with self._lock:
            template = self._compiled.get(key)
            if template is not None:
                self._compiled.move_to_end(key)
        if template is None:
            template = self._compile(key)
            with self._lock:
                self._compiled[key] = template
                if len(self._compiled) > self._cached:
                    self._compiled.popitem(last=False)
        return JsonConstraint(template.deep_copy(), self.vocab_size)

    def _compile(self, schema: str):
        matcher_type = self._llguidance.LLMatcher
        try:
            grammar = matcher_type.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
        except ValueError as e:
            raise UnsupportedSchema(f"the JSON schema is not a JSON object ({e})") from None
        matcher = matcher_type(self._view, grammar, log_level=0)
        if matcher.is_error():
            error = matcher.get_error()
            unimplemented = _UNIMPLEMENTED.search(error)
            if unimplemented:
                features = tuple(json.loads(f"[{unimplemented.group(1)}]"))
                raise UnsupportedSchema(f"the JSON schema uses {', '.join(features)}, which structured outputs do "
                                        "not support", features)
            raise UnsupportedSchema(f"the JSON schema cannot be enforced: {error}")
        return matcher


class _TokenView:
    """What llguidance reads of a tokenizer: each id's bytes, the special ids, and an encoder."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: list[int]):
        self._tokenizer = tokenizer
        pieces = min(vocab_size, tokenizer.vocab_size)
        self.tokens = [tokenizer.token_bytes(i) for i in range(pieces)]
        self.tokens += [f"<id{i}>".encode() for i in range(pieces, vocab_size)]  # no piece: never text
        self.special_token_ids = sorted({i for i in tokenizer.marker_ids() if i < vocab_size}
                                        | set(range(pieces, vocab_size)))
        self.bos_token_id = tokenizer.bos_id
        self.eos_token_id = stop_ids[0]

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenizer.encode(text.decode("utf-8", "replace"), add_bos=False)
