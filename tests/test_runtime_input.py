"""Bad input to a loaded model gets a clear RuntimeInputError and loses nothing: token ids that are
not integers or lie outside the vocabulary, empty prompts and batches, prompts of the wrong type. The
max_new_tokens rule, the same in Model.generate/stream, the CLI's generate and the server: a number
given explicitly must fit in the context with the prompt (ContextLengthExceeded, naming both);
left unset it is 64 (the server's completions: 16), or what fits after a long prompt."""

import shutil

import numpy as np
import pytest

import gemma_runtime
from cli_util import cli
from gemma_runtime import api_models as api
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from gemma_runtime.model import DEFAULT_MAX_NEW_TOKENS
from gemma_runtime.server import COMPLETIONS_DEFAULT_MAX_TOKENS, ApiError, Service, completion_request
from parity import prompt
from test_chat_tokens import gemma1_like_tokenizer

MAX_SEQ_LEN = 80
VOCAB = 384


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime-input")
    folder = shutil.copytree(tiny_checkpoints["gemma-mqa"], root / "ckpt")
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    export(folder, root / "out", ExportOptions(target="ort-cpu", max_seq_len=MAX_SEQ_LEN))
    return root / "out"


@pytest.fixture(scope="module")
def model(artifact):
    return gemma_runtime.load(artifact, threads=1)


BAD_PROMPTS = [
    ([2, -1], RuntimeInputError, r"token id -1 is outside the vocabulary \(0..383\)"),
    ([2, VOCAB], RuntimeInputError, r"token id 384 is outside the vocabulary"),
    ([2, 3.0], RuntimeInputError, r"token ids must be integers; position 1 holds 3.0 \(float\)"),
    ([2, True], RuntimeInputError, r"position 1 holds True \(bool\)"),
    ([2, "5"], RuntimeInputError, r"a list mixes prompts \(text or lists of token ids\) with 2 \(int\); token ids "
                                  "must all be integers"),
    (np.array([2.0, 5.5]), RuntimeInputError, r"position 0 holds .*2.0\)? \(float64\)"),
    (np.array([True, False]), RuntimeInputError, r"position 0 holds (np.)?True_? \(bool_?\)"),
    (np.zeros((1, 2, 3), np.int64), RuntimeInputError, r"one-dimensional, got an array of shape \(1, 2, 3\)"),
    ([], RuntimeInputError, "empty prompt: no token ids"),
    ("", RuntimeInputError, "empty prompt text"),
    (5, RuntimeInputError, "a prompt is text or a list of token ids, not int"),
    (None, RuntimeInputError, "not NoneType"),
    ([[2, 3], 4], RuntimeInputError, r"a list mixes prompts \(text or lists of token ids\) with 4 \(int\)"),
    ([[2, 3], []], RuntimeInputError, "empty prompt: no token ids"),
    ([[2, 3], [2, -5]], RuntimeInputError, "token id -5 is outside"),
    ([2] * (MAX_SEQ_LEN + 1), ContextLengthExceeded, "prompt has 81 tokens"),
]


@pytest.mark.parametrize("bad,error,message", BAD_PROMPTS)
def test_bad_prompts_are_refused_clearly(bad, error, message, model):
    before = model.generate([2, 40, 41], max_new_tokens=5).token_ids
    with pytest.raises(error, match=message):
        model.generate(bad)
    with pytest.raises(error, match=message):
        model.stream(bad)  # checked at the call, before the first piece
    if isinstance(bad, np.ndarray) or isinstance(bad, list) and not any(isinstance(x, (str, list)) for x in bad):
        with pytest.raises(error, match=message):
            model.logits(bad)
    assert model.generate([2, 40, 41], max_new_tokens=5).token_ids == before  # nothing lost


@pytest.mark.parametrize("bad,message", [("ab", "token ids must be a list or a 1-D array of integers, not str"),
                                         ([[2, 3]], r"position 0 holds \[2, 3\] \(list\)"),
                                         (None, "not NoneType")])
def test_logits_takes_token_ids_alone(bad, message, model):
    with pytest.raises(RuntimeInputError, match=message):
        model.logits(bad)


def test_numpy_ids_and_batches_are_prompts(model):
    ids = prompt(3, 9)
    alone = model.generate(ids, max_new_tokens=6).token_ids
    assert model.generate(np.asarray(ids, np.int32), max_new_tokens=6).token_ids == alone
    assert model.generate([np.int64(i) for i in ids], max_new_tokens=6).token_ids == alone
    batch = model.generate(np.asarray([ids, ids]), max_new_tokens=6)  # a 2-D array: one prompt per row
    assert [r.token_ids for r in batch] == [alone, alone]
    np.testing.assert_array_equal(model.logits(np.asarray(ids)), model.logits(tuple(ids)))


@pytest.mark.parametrize("value,message", [(-1, "must be >= 0, got -1"), (2.5, "must be an integer, got 2.5"),
                                           (True, "must be an integer, got True"), ("3", "must be an integer")])
def test_max_new_tokens_must_be_a_count(value, message, model):
    with pytest.raises(RuntimeInputError, match=message):
        model.generate([2, 5], max_new_tokens=value)


def test_max_new_tokens_given_must_fit_and_the_default_shrinks_to_fit(model):
    long = prompt(4, MAX_SEQ_LEN - 7)
    with pytest.raises(ContextLengthExceeded, match=r"the prompt \(73 tokens\) and max_new_tokens \(8\) exceed this "
                                                    r"artifact's context of 80 tokens"):
        model.generate(long, max_new_tokens=8)
    with pytest.raises(ContextLengthExceeded, match=r"the longest prompt \(73 tokens\) and max_new_tokens \(8\)"):
        model.generate([prompt(5, 3), long], max_new_tokens=8)
    with pytest.raises(ContextLengthExceeded, match=r"\(73 tokens\) and max_new_tokens \(8\)"):
        model.stream(long, max_new_tokens=8)  # at the call, not at the first piece
    fits = model.generate(long, max_new_tokens=7)
    default = model.generate(long)
    assert default.token_ids == fits.token_ids and len(fits.token_ids) == 7 and fits.finish_reason == "length"
    short = model.generate(prompt(6, 5))
    assert len(short.token_ids) == DEFAULT_MAX_NEW_TOKENS and short.finish_reason == "length"


def text_of(model, tokens: int) -> str:
    """A text prompt that the artifact's tokenizer makes `tokens` ids of (BOS included)."""
    text = "a" * tokens
    while len(model.tokenizer.encode(text)) > tokens:
        text = text[:-1]
    assert len(model.tokenizer.encode(text)) == tokens
    return text


def test_cli_generate_follows_the_rule(artifact, model, capsys):
    text = text_of(model, MAX_SEQ_LEN - 5)
    code, _, err = cli(capsys, "generate", artifact, "--prompt", text, "--max-new-tokens", "6", "--temperature", "0")
    assert code == 2 and err.strip().splitlines()[-1] == ("error: the prompt (75 tokens) and max_new_tokens (6) "
                                                          "exceed this artifact's context of 80 tokens")
    code, stdout, _ = cli(capsys, "generate", artifact, "--prompt", text, "--temperature", "0")
    expected = model.generate(text)
    assert code == 0 and stdout == expected.text + "\n" and len(expected.token_ids) <= 5


def test_server_max_tokens_follows_the_rule(artifact):
    service = Service(artifact, max_batch=1, threads=1)

    def engine_request(**body):
        (choice,), _ = completion_request(service, api.CompletionRequest(**body))
        return choice.request

    try:
        long = prompt(7, MAX_SEQ_LEN - 5)
        assert engine_request(prompt=long).max_new_tokens == 5  # the default 16 shrinks to what fits
        assert engine_request(prompt=[2, 5]).max_new_tokens == COMPLETIONS_DEFAULT_MAX_TOKENS
        with pytest.raises(ApiError, match=r"prompt \(75 tokens\) and max_new_tokens \(6\) exceed") as refused:
            engine_request(prompt=long, max_tokens=6)
        assert refused.value.status == 400 and refused.value.code == "context_length_exceeded"
    finally:
        service.close()


def test_an_onnxruntime_below_the_floor_is_refused_in_one_line(artifact, capsys, monkeypatch):
    import onnxruntime

    from gemma_runtime.backends.ort_session import check_version

    check_version("1.27.0")
    check_version("1.33.0.dev20261201")
    monkeypatch.setattr(onnxruntime, "__version__", "1.26.0")
    with pytest.raises(RuntimeInputError, match=r"onnxruntime 1.26.0 is too old: .* need onnxruntime >= 1.27"):
        gemma_runtime.load(artifact, threads=1)
    code, _, err = cli(capsys, "generate", artifact, "--prompt", "hi", "--max-new-tokens", "2")
    assert code == 2 and err.strip().splitlines() == ["error: onnxruntime 1.26.0 is too old: gemma-export's graphs "
                                                      "need onnxruntime >= 1.27 (pip install -U 'onnxruntime>=1.27')"]
