"""The real Gemma 3 270M (the embedded default, from its GGUF) against transformers reading the
same GGUF in fp32."""

import numpy as np
import pytest
import torch

import gemma_runtime
from gemma_export.checkpoints.default_model import default_gguf_path
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_export.texts import PROMPTS
from gemma_runtime.manifest import Tokens

CONTINUATION = (" the capital of the country of France. It is the largest city in France and the second"
                " largest city in Europe")


@pytest.fixture(scope="session")
def real_gguf():
    return default_gguf_path()


@pytest.fixture(scope="session")
def real_artifact(real_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "generic"
    export(None, out, ExportOptions(target="generic"))  # no source: the embedded default
    return out


@pytest.fixture(scope="session")
def transformers_real(real_gguf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(real_gguf.parent, gguf_file=real_gguf.name, dtype=torch.float32)
    return model.eval()


def test_greedy_continuation_matches_transformers(real_artifact, transformers_real):
    model = gemma_runtime.load(real_artifact)
    ids = model.tokenizer.encode("The capital of France is")
    assert ids[0] == 2 and ids.count(2) == 1
    ours = model.generate("The capital of France is", max_new_tokens=32)
    with torch.no_grad():
        theirs = transformers_real.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):]
    assert ours.token_ids == theirs.tolist()
    assert ours.text.startswith(CONTINUATION)


def test_teacher_forced_top1_agreement_with_transformers(real_artifact, transformers_real):
    model = gemma_runtime.load(real_artifact)
    agree = total = 0
    for text in PROMPTS:
        ids = model.tokenizer.encode(text)
        ours = model.logits(ids)
        with torch.no_grad():
            ref = transformers_real(torch.tensor([ids])).logits[0].numpy()
        agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        total += len(ids)
        assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()
    assert total >= 300
    assert agree / total >= 0.995


def test_chat_tokens_come_from_the_tokenizer(real_artifact):
    model = gemma_runtime.load(real_artifact)
    assert model.manifest.tokens == Tokens(bos=2, eos=1, pad=0, start_of_turn=105, end_of_turn=106, stop=(1, 106))
    assert model.stop_ids == {1, 106}
    from gemma_runtime.chat import render
    text = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], model.chat_format())
    assert text == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    ids = model.tokenizer.encode(text)
    assert ids[:2] == [2, 105] and ids.count(106) == 1 and ids[-3] == 105


def test_stream_pieces_join_to_the_generated_text(real_artifact):
    model = gemma_runtime.load(real_artifact)
    pieces = list(model.stream("Emoji test: 🙂 and", max_new_tokens=12))
    assert "".join(pieces) == model.generate("Emoji test: 🙂 and", max_new_tokens=12).text
    assert all("\ufffd" not in p for p in pieces)
