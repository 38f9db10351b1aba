"""The incremental detokenizer (gemma_runtime/detokenizer.py): on many random token sequences of
the tiny and the real tokenizer (byte-fallback tokens of multi-byte UTF-8, whole and cut short;
stop strings spanning tokens), the text released token by token is only ever extended, never
revised, and in the end equals tokenizer.decode(the tokens fed) cut before the first stop string
(a generation ends at the token that completes a stop string)."""

import numpy as np
import pytest

from gemma_export.checkpoints import open_source
from gemma_runtime.detokenizer import Detokenizer
from gemma_runtime.tokenizer import Tokenizer
from test_chat_tokens import gemma1_like_tokenizer
from test_gemma4_runtime import tokenizer_json

CHARACTERS = "ab é€世🙂\n"  # 1, 2, 3 and 4 bytes in UTF-8


@pytest.fixture(scope="module")
def tiny_sentencepiece():
    return Tokenizer("tokenizer.model", gemma1_like_tokenizer(), bos_id=2)


@pytest.fixture(scope="module")
def real_sentencepiece():
    return open_source(None).tokenizer()  # the embedded Gemma 3 270M's: 262144 pieces, byte fallback


def byte_ids(tokenizer: Tokenizer, rng: np.random.Generator) -> list[int]:
    """One character as byte-fallback tokens, sometimes cut short (a dangling lead byte)."""
    data = rng.choice(list(CHARACTERS)).encode()
    if len(data) > 1 and rng.random() < 0.2:
        data = data[: rng.integers(1, len(data))]
    return [tokenizer.token_id(f"<0x{b:02X}>") for b in data]


def random_ids(tokenizer: Tokenizer, rng: np.random.Generator, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        kind = rng.random()
        if kind < 0.4:
            ids += byte_ids(tokenizer, rng)
        elif kind < 0.7:
            ids += tokenizer.encode(str(rng.choice(["hello", " world", "ab c", "é!", " 世界", "🙂🙂", "\n\n"])),
                                    add_bos=False)
        else:
            ids.append(int(rng.integers(0, tokenizer.vocab_size)))
    return ids[:n]


def cut(text: str, stops: list[str]) -> str:
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else text


def check(tokenizer: Tokenizer, ids: list[int], stops: list[str]) -> None:
    detokenizer = Detokenizer(tokenizer, stops)
    released, fed = [], 0
    while fed < len(ids) and not detokenizer.stopped:
        released.append(detokenizer.add(ids[fed]))
        fed += 1
    released.append(detokenizer.finish())
    whole = tokenizer.decode(ids[:fed])
    expected = cut(whole, stops)
    assert "".join(released) == detokenizer.text == expected, (ids, stops)
    for n in range(len(released)):  # only ever extended
        assert expected.startswith("".join(released[:n])), (ids, stops)
    assert detokenizer.stopped == any(s in whole for s in stops)
    assert fed == len(ids) or detokenizer.stopped and not any(s in tokenizer.decode(ids[:fed - 1]) for s in stops)


@pytest.mark.parametrize("which", ["tiny_sentencepiece", "real_sentencepiece"])
def test_released_text_equals_the_whole_decode(which, request):
    tokenizer = request.getfixturevalue(which)
    rng = np.random.default_rng(7)
    for _ in range(300):
        ids = random_ids(tokenizer, rng, int(rng.integers(1, 40)))
        whole = tokenizer.decode(ids)
        stops = []
        if len(whole) > 3 and rng.random() < 0.7:  # a stop string from the text itself, likely spanning tokens
            start = int(rng.integers(0, len(whole) - 2))
            stops.append(whole[start: start + int(rng.integers(2, 6))])
        stops.append("never appears \u2603")
        check(tokenizer, ids, stops)
        check(tokenizer, ids, [])


def test_tokenizer_json_released_text_equals_the_whole_decode():
    tokenizer = Tokenizer("tokenizer.json", tokenizer_json().encode(), bos_id=2)
    rng = np.random.default_rng(8)
    for _ in range(100):
        ids = [int(i) for i in rng.choice([105, 106, 200, 201, 202, 203, 204, 205, 50], size=rng.integers(1, 20))]
        check(tokenizer, ids, ["world be", "<turn|>"])


def test_incomplete_characters_are_held_back_until_whole(tiny_sentencepiece):
    detokenizer = Detokenizer(tiny_sentencepiece)
    ids = [tiny_sentencepiece.token_id("a"), *(tiny_sentencepiece.token_id(f"<0x{b:02X}>") for b in "🙂".encode())]
    pieces = [detokenizer.add(i) for i in ids]
    assert pieces == ["a", "", "", "", "🙂"]


def test_a_stop_string_spanning_tokens_is_never_shown(tiny_sentencepiece):
    detokenizer = Detokenizer(tiny_sentencepiece, ["bc"])
    pieces = [detokenizer.add(i) for i in tiny_sentencepiece.encode("abcd", add_bos=False)]
    assert pieces == ["a", "", "", ""] and detokenizer.stopped and detokenizer.finish() == ""
    assert detokenizer.text == "a"



def test_a_stop_string_of_incomplete_characters_stops_at_once(tiny_sentencepiece):
    """As tokenizer.decode shows them: dangling bytes are U+FFFD, which a stop string may hold."""
    detokenizer = Detokenizer(tiny_sentencepiece, ["\ufffd\ufffd"])
    lone = tiny_sentencepiece.token_id("<0x80>")  # a continuation byte with no lead: never completes
    assert [detokenizer.add(lone) for _ in range(2)] == ["", ""] and detokenizer.stopped
