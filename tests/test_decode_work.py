"""The work per generated token, counted: Model.generate, Model.stream and the Engine make one
prefill call and then one decoder call per further token (width 1), and pass the tokenizer a
bounded number of tokens per generated token, whatever the length (the text is assembled
incrementally, with stop strings checked; it used to be decoded again from the first token)."""


import numpy as np
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.detokenizer import Detokenizer
from gemma_runtime.engine import Engine
from gemma_runtime.tokenizer import Tokenizer
from test_chat_tokens import gemma1_like_tokenizer, with_tokenizer

PROMPT = [2, 200, 210, 220, 230, 240]
TOKENIZER_WORK_PER_TOKEN = 6  # tokens passed to tokenizer.decode, per generated token, at most


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("decode-work")
    folder = with_tokenizer(tiny_checkpoints["gemma-mqa"], root / "ckpt")
    export(folder, root / "out", ExportOptions(target="ort-cpu", max_seq_len=80))
    return root / "out"


class Counted:
    """A loaded model whose decoder calls (their widths) and tokenizer work are recorded."""

    def __init__(self, artifact, monkeypatch):
        self.model = gemma_runtime.load(artifact, threads=1)
        self.model.stop_ids = set()  # run to the length asked for
        self.widths: list[int] = []
        self.decoded: list[int] = []
        step, decode = self.model.backend.step, self.model.tokenizer.decode

        def counted_step(ids, *args, **kwargs):
            self.widths.append(np.asarray(ids).shape[1])
            return step(ids, *args, **kwargs)

        def counted_decode(ids):
            self.decoded.append(len(ids))
            return decode(ids)

        monkeypatch.setattr(self.model.backend, "step", counted_step)
        monkeypatch.setattr(self.model.tokenizer, "decode", counted_decode)


def run(how: str, model, n: int) -> None:
    if how == "generate":
        assert len(model.generate(PROMPT, max_new_tokens=n, stop=["never"]).token_ids) == n
    elif how == "stream":
        assert "".join(model.stream(PROMPT, max_new_tokens=n, stop=["never"]))
    else:
        engine = Engine(model, max_batch=1, prefill_chunk=len(PROMPT))
        request = engine.submit(engine.request(PROMPT, max_new_tokens=n, stop=["never"]))
        while engine.step():
            continue
        assert len(request.tokens) == n


@pytest.mark.parametrize("how", ["generate", "stream", "engine"])
def test_one_call_per_token_and_bounded_tokenizer_work(artifact, monkeypatch, how):
    for n in (8, 64):
        counted = Counted(artifact, monkeypatch)
        run(how, counted.model, n)
        assert counted.widths == [len(PROMPT)] + [1] * (n - 1)  # n tokens: the prefill's, then one per call
        assert 0 < sum(counted.decoded) <= TOKENIZER_WORK_PER_TOKEN * n, (n, sum(counted.decoded))


def test_tokenizer_work_per_token_does_not_grow_with_the_length():
    tokenizer = Tokenizer("tokenizer.model", gemma1_like_tokenizer(), bos_id=2)
    rng = np.random.default_rng(0)
    per_token = {}
    for n in (64, 512):
        decoded = []
        counting = type("Counting", (), {"decode": lambda self, ids: decoded.append(len(ids)) or tokenizer.decode(ids)})
        detokenizer = Detokenizer(counting(), ["never"])
        for token in rng.integers(4, 384, n):
            detokenizer.add(int(token))
        detokenizer.finish()
        per_token[n] = sum(decoded) / n
    assert per_token[512] <= TOKENIZER_WORK_PER_TOKEN and abs(per_token[512] - per_token[64]) < 1, per_token
