"""Log probabilities through the live server (gemma_runtime/server.py) against transformers' own
logits of the tiny checkpoint: lm-evaluation-harness's `local-completions` requests (echo,
logprobs 1, max_tokens 1 or 0, prompts as token lists and strings) give per-token logprobs within
1e-4 of a float64 log-softmax of transformers' logits, and the loglikelihood and greedy flag its
parser reads; chat logprobs with top alternatives and bytes; streamed logprobs equal the whole
response's; a list of prompts is one choice each, in order."""

import numpy as np
import pytest
import torch

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from test_chat_tokens import gemma1_like_tokenizer
from test_server import LiveServer
from tiny import write_checkpoint

MAX_SEQ_LEN = 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = write_checkpoint("gemma3", tmp_path_factory.mktemp("logprobs") / "ckpt")
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    return folder


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("logprobs") / "tiny"
    export(checkpoint, out, ExportOptions(max_seq_len=MAX_SEQ_LEN))
    live = LiveServer(out, max_batch=3, max_queue=16)
    yield live
    live.close()


@pytest.fixture(scope="module")
def greedy(server):
    """text -> (prompt ids, the greedy tokens the artifact generates after it)."""
    model = gemma_runtime.load(server.service.model.folder)

    def tokens(text: str, new: int) -> tuple[list[int], list[int]]:
        return model.encode(text), model.generate(text, max_new_tokens=new).token_ids

    return tokens


@pytest.fixture(scope="module")
def reference(checkpoint):
    """token ids -> transformers' logprobs of ids[1:] after their prefixes, and its logits."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32,
                                                              attn_implementation="eager").eval()

    def logprobs(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        table = torch.log_softmax(logits, -1)
        return table[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy(), table.numpy()

    return logprobs


def lm_eval_parse(choice: dict, ctxlen: int) -> tuple[float, bool]:
    """lm-evaluation-harness's LocalCompletionsAPI.parse_logprobs for one choice."""
    logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
    tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
    return sum(logprobs), all(lp == max(top.values()) for lp, top in zip(logprobs, tops))


def test_lm_eval_loglikelihood_requests(server, reference):
    """Two (context, continuation) pairs as token lists in one request, as lm-eval batches them."""
    rng = np.random.default_rng(0)
    pairs = [([2, *rng.integers(363, 384, 9).tolist()], rng.integers(363, 384, 4).tolist()),
             ([2, *rng.integers(363, 384, 23).tolist()], rng.integers(363, 384, 2).tolist())]
    body = {"model": "tiny", "prompt": [c + x for c, x in pairs], "echo": True, "logprobs": 1, "max_tokens": 1,
            "temperature": 0, "seed": 1234}
    status, reply = server.post("/v1/completions", body)
    assert status == 200, reply
    worst = 0.0
    for (context, continuation), choice, index in zip(pairs, reply["choices"], range(2)):
        ids = context + continuation
        expected, table = reference(ids)
        lp = choice["logprobs"]
        assert choice["index"] == index and len(lp["token_logprobs"]) == len(ids) + 1  # + the new token
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        got = np.asarray(lp["token_logprobs"][1:len(ids)])
        worst = max(worst, float(np.abs(got - expected).max()))
        total, greedy = lm_eval_parse(choice, len(context))
        assert abs(total - expected[len(context) - 1:].sum()) < TOLERANCE * len(continuation)
        assert greedy == all(table[i - 1].argmax() == ids[i] for i in range(len(context), len(ids)))
        assert all(len(top) == 1 for top in lp["top_logprobs"][1:])
        assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    assert worst < TOLERANCE, worst
    print(f"max |server - transformers| over prompt logprobs: {worst:.2e}")


def test_echo_with_max_tokens_0_scores_the_prompt_alone(server, reference):
    tokenizer = server.service.model.tokenizer
    status, reply = server.post("/v1/completions", {"prompt": ["abc def", "sea bed"], "echo": True, "logprobs": 2,
                                                    "max_tokens": 0})
    assert status == 200, reply
    for text, choice in zip(["abc def", "sea bed"], reply["choices"]):
        ids = tokenizer.encode(text)
        assert choice["text"] == text and choice["finish_reason"] == "length"
        lp = choice["logprobs"]
        assert lp["tokens"] == [tokenizer.token_bytes(i).decode() for i in ids] and lp["tokens"][0] == "<bos>"
        assert np.abs(np.asarray(lp["token_logprobs"][1:]) - reference(ids)[0]).max() < TOLERANCE
        assert all(len(top) == 2 and max(top.values()) >= lp["token_logprobs"][k + 1]
                   for k, top in enumerate(lp["top_logprobs"][1:]))
    assert reply["usage"]["completion_tokens"] == 0


def test_completion_logprobs_without_echo_and_streamed(server, reference, greedy):
    body = {"prompt": "abc", "logprobs": 3, "max_tokens": 6, "temperature": 0}
    status, whole = server.post("/v1/completions", body)
    assert status == 200, whole
    ids, generated = greedy("abc", 6)
    lp = whole["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(generated) == whole["usage"]["completion_tokens"]
    expected, _ = reference(ids + generated)
    assert np.abs(np.asarray(lp["token_logprobs"]) - expected[len(ids) - 1:]).max() < TOLERANCE
    assert lp["text_offset"][0] == len("abc")
    chunks = list(server.client.completions.create(model="tiny", stream=True, **body))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    # the same prompt again reuses its cached prefix: the last prompt token's logits come from a
    # one-token call, equal within fp32 rounding
    np.testing.assert_allclose(sum((s.token_logprobs for s in streamed), []), lp["token_logprobs"], atol=1e-5)
    assert sum((s.text_offset for s in streamed), []) == lp["text_offset"]
    echoed = list(server.client.completions.create(model="tiny", stream=True, echo=True, **body))
    assert "".join(c.choices[0].text for c in echoed if c.choices) == "abc" + whole["choices"][0]["text"]
    first = echoed[0].choices[0].logprobs
    assert first.token_logprobs[0] is None and len(first.tokens) == len(ids)


def test_chat_logprobs_with_top_alternatives(server, reference, greedy):
    from gemma_runtime.chat import render

    messages = [{"role": "user", "content": "abc"}]
    done = server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                 logprobs=True, top_logprobs=3)
    content = done.choices[0].logprobs.content
    ids, generated = greedy(render(messages, server.service.model.chat_format()), 5)
    assert len(content) == len(generated) == done.usage.completion_tokens
    expected, _ = reference(ids + generated)
    assert np.abs(np.asarray([e.logprob for e in content]) - expected[len(ids) - 1:]).max() < TOLERANCE
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == entry.logprob  # greedy
        assert bytes(entry.bytes).decode() == entry.token
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)
    stream = server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                   logprobs=True, top_logprobs=3, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]  # logprobs within rounding: a reused prefix
    np.testing.assert_allclose([e.logprob for e in streamed], [e.logprob for e in content], atol=1e-5)
    plain = server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == done.choices[0].message.content


def test_a_list_of_prompts_is_one_choice_each_in_order(server):
    prompts = ["abc", "bad cab", "a"]
    alone = [server.client.completions.create(model="tiny", prompt=p, max_tokens=5, temperature=0).choices[0].text
             for p in prompts]
    both = server.client.completions.create(model="tiny", prompt=prompts, max_tokens=5, temperature=0)
    assert [c.index for c in both.choices] == [0, 1, 2] and [c.text for c in both.choices] == alone
    ids = [server.service.model.tokenizer.encode(p) for p in prompts]
    assert both.usage.prompt_tokens == sum(map(len, ids))
    by_ids = server.client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert [c.text for c in by_ids.choices] == alone
    chunks = list(server.client.completions.create(model="tiny", prompt=prompts, max_tokens=5, temperature=0,
                                                   stream=True))
    for i, text in enumerate(alone):
        assert "".join(c.choices[0].text for c in chunks if c.choices[0].index == i) == text
