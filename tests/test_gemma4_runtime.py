"""Gemma 4's runtime side: its tokenizer comes as tokenizer.json (read with `tokenizers`, no
torch), its chat turns are <|turn>role ... <turn|>, and generation stops at eos, <turn|> and
<|tool_response>, ids taken from the tokenizer."""

import dataclasses
import json

import pytest

import gemma_runtime
from gemma_export.chat_formats import CHAT_FORMATS
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.chat import chat_format, render
from tiny import write_checkpoint

SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<|tool_response>": 50, "<|turn>": 105, "<turn|>": 106}
WORDS = ["user", "model", "hello", "world", "be", "brief"]


def tokenizer_json() -> str:
    """A word-level tokenizer.json with Gemma 4's special pieces at their ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {**SPECIALS, **{w: 200 + i for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIALS))
    return tok.to_str()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma4_runtime")
    folder = write_checkpoint("gemma4-k-eq-v", root / "ckpt")
    (folder / "tokenizer.json").write_text(tokenizer_json())
    export(folder, root / "out", ExportOptions(target="onnx", max_seq_len=64))
    assert (root / "out" / "tokenizer.json").is_file() and not (root / "out" / "tokenizer.model").exists()
    return gemma_runtime.load(root / "out", threads=1)


def test_stop_ids_and_turn_pieces_come_from_the_tokenizer(model):
    tokens = model.manifest.tokens
    assert (tokens.start_of_turn, tokens.end_of_turn) == (105, 106)
    assert tokens.stop == (1, 106, 50) and model.stop_ids == {1, 106, 50}


def test_text_is_encoded_with_one_bos(model):
    assert model.tokenizer.encode("hello world") == [2, 202, 203]
    assert model.tokenizer.decode([202, 203]) == "hello world"


def test_gemma4_chat_turns(model):
    text = render([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
                  model.chat_format())
    assert text == "<|turn>user\nbe brief\n\nhello<turn|>\n<|turn>model\n"
    ids = model.tokenizer.encode(text)
    assert ids[:3] == [2, 105, 200] and ids.count(2) == 1 and ids[-2:] == [105, 201]


def test_generation_stops_at_any_stop_id(model, monkeypatch):
    steps = iter([203, 50, 204])
    monkeypatch.setattr(model, "backend", _Scripted(model.backend, steps))
    result = model.generate([2, 202], max_new_tokens=5)
    assert result.token_ids == [203] and result.finish_reason == "stop"


class _Scripted:
    """A backend whose logits pick the given tokens in turn."""

    def __init__(self, backend, tokens):
        self.max_seq_len, self.tokens, self.vocab = backend.max_seq_len, tokens, 384

    def _next(self, rows: int):
        import numpy as np

        logits = np.zeros((rows, self.vocab), np.float32)
        logits[:, next(self.tokens)] = 1.0
        return logits

    def reserve(self, rows):
        pass

    def step(self, ids, past, seq, keep=None, first_row=0, spliced=None):
        return self._next(len(ids))[:, None]


def test_chat_format_of_the_earlier_families_is_unchanged(model):
    assert render([{"role": "user", "content": "hi"}], CHAT_FORMATS["gemma3"]) == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert model.manifest.chat == CHAT_FORMATS["gemma4"]
    older = dataclasses.replace(model.manifest, format_version=3, chat=None)
    assert chat_format(older, model.tokenizer) == CHAT_FORMATS["gemma4"]  # from the tokenizer's turn pieces
    no_turns = dataclasses.replace(older, tokens=dataclasses.replace(older.tokens, start_of_turn=None))
    with pytest.raises(gemma_runtime.RuntimeInputError, match="no chat format"):
        chat_format(no_turns, model.tokenizer)
    assert json.loads(tokenizer_json())["model"]["type"] == "WordLevel"
