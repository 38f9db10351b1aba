"""The OpenAI-compatible server (gemma_runtime/server.py), live on loopback, driven by the official
`openai` client: completions and chat, streaming and not, usage, stop strings, seeds; bad requests
get OpenAI-style 4xx errors; a bounded load test loses and duplicates no token."""

import concurrent.futures
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import uvicorn

import gemma_runtime
from gemma_runtime.server import DEFAULT_MAX_BODY_BYTES, Service, create_app

from conftest import SERVER_MAX_SEQ_LEN as MAX_SEQ_LEN
GUARD_S = 120  # against hangs only; nothing here asserts a time


@pytest.fixture(scope="session")
def artifact(server_artifact):
    """The session's tiny Gemma 1 artifact with a tokenizer (conftest.py), shared by the server tests."""
    return server_artifact


class LiveServer:
    def __init__(self, artifact, api_key=None, max_body_bytes=DEFAULT_MAX_BODY_BYTES, cors_origins=(), **options):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.service = Service(artifact, **options)
        app = create_app(self.service, api_key, max_body_bytes, cors_origins)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + GUARD_S
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or "none", timeout=GUARD_S,
                                    max_retries=0)

    def close(self):
        self.server.should_exit = True
        self.thread.join(GUARD_S)

    def post(self, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, {"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=GUARD_S) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path: str) -> tuple[int, str, dict]:
        with urllib.request.urlopen(self.url + path, timeout=GUARD_S) as r:
            return r.status, r.read().decode(), dict(r.headers)


@pytest.fixture(scope="module")
def server(artifact):
    live = LiveServer(artifact, max_batch=4, max_queue=64)
    yield live
    live.close()


def test_models_health_and_metrics(server):
    assert [m.id for m in server.client.models.list().data] == ["tiny"]
    status, body, headers = server.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok" and headers["x-gemma-replica"]
    server.client.completions.create(model="tiny", prompt="abc", max_tokens=2, temperature=0)
    _, text, _ = server.get("/metrics")
    values = dict(line.split() for line in text.splitlines() if not line.startswith("#"))
    assert float(values["gemma_requests_total"]) >= 1 and float(values["gemma_generated_tokens_total"]) >= 1
    assert float(values["gemma_max_slots"]) == 4 and float(values["gemma_time_to_first_token_seconds_count"]) >= 1
    assert float(values["gemma_inter_token_latency_seconds_count"]) >= 1
    assert float(values['gemma_time_to_first_token_seconds_bucket{le="+Inf"}']) >= 1


def test_completion_equals_generate(server, artifact):
    expected = gemma_runtime.load(artifact).generate("abc bad", max_new_tokens=8)
    done = server.client.completions.create(model="tiny", prompt="abc bad", max_tokens=8, temperature=0)
    choice = done.choices[0]
    assert choice.text == expected.text and choice.finish_reason == expected.finish_reason
    prompt_tokens = len(gemma_runtime.load(artifact).tokenizer.encode("abc bad"))
    assert done.usage.prompt_tokens == prompt_tokens  # BOS once, as generate() encodes
    assert done.usage.completion_tokens == len(expected.token_ids)


def test_streaming_gives_the_same_text_and_usage(server):
    whole = server.client.completions.create(model="tiny", prompt="ab", max_tokens=10, temperature=0)
    chunks = list(server.client.completions.create(model="tiny", prompt="ab", max_tokens=10, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_chat_streaming_and_not(server):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "abc"}]
    whole = server.client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=6,
                                                  temperature=0)
    assert whole.choices[0].message.role == "assistant" and whole.object == "chat.completion"
    stream = server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                                   stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(pieces) == whole.choices[0].message.content


def test_a_seed_repeats_its_sample(server):
    a, b = (server.client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1.0, seed=7)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


def test_stop_strings_cut_the_text(server):
    whole = server.client.completions.create(model="tiny", prompt="ab", max_tokens=12, temperature=0)
    text = whole.choices[0].text
    assert len(text) >= 4, "the fixed random model should generate text to cut"
    stop = text[2:4]
    cut = server.client.completions.create(model="tiny", prompt="ab", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_n_choices_share_the_prefill_and_each_samples_its_seed(server):
    """n = 3 of a prompt: choice i equals the same request alone with seed + i, the prompt is fed
    once (the others copy its cache row and feed its last token), usage counts it once; greedy, the
    n choices are the same text; a list of prompts gives prompt-major choices; streamed, the same."""
    metrics = server.service.engine.metrics
    prompt = "cab dab " * 4
    fed, cached = metrics.prompt_tokens, metrics.cached_prompt_tokens
    done = server.client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=1.0, seed=40, n=3)
    length, reused = done.usage.prompt_tokens, done.usage.prompt_tokens_details.cached_tokens  # from earlier tests
    assert metrics.prompt_tokens - fed == length - reused + 2
    assert metrics.cached_prompt_tokens - cached == reused + 2 * (length - 1)
    alone = [server.client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=1.0, seed=40 + i)
             for i in range(3)]
    assert length == alone[0].usage.prompt_tokens > 2
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert [c.text for c in done.choices] == [a.choices[0].text for a in alone]
    assert len({a.choices[0].text for a in alone}) > 1
    assert done.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    greedy = server.client.completions.create(model="tiny", prompt=["ab", "ba"], max_tokens=6, temperature=0, n=2)
    texts = [c.text for c in sorted(greedy.choices, key=lambda c: c.index)]
    single = [server.client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0).choices[0].text
              for p in ("ab", "ba")]
    assert texts == [single[0], single[0], single[1], single[1]]
    chunks = list(server.client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=1.0,
                                                   seed=40, n=3, stream=True, stream_options={"include_usage": True}))
    streamed = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(3)]
    assert streamed == [a.choices[0].text for a in alone]
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (length, done.usage.completion_tokens)


def test_chat_n_choices_streamed_and_not(server):
    messages = [{"role": "user", "content": "abc"}]
    whole = server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=1.0,
                                                  seed=3, n=2, logprobs=True, top_logprobs=1)
    assert [c.index for c in whole.choices] == [0, 1] and all(c.logprobs.content for c in whole.choices)
    stream = list(server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                                        temperature=1.0, seed=3, n=2, stream=True))
    for choice in whole.choices:
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices[0].index == choice.index]
        assert "".join(pieces) == choice.message.content
    second = server.client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=1.0,
                                                   seed=4)
    assert second.choices[0].message.content == whole.choices[1].message.content


def test_echo_with_n_scores_the_prompt_for_every_choice(server):
    done = server.client.completions.create(model="tiny", prompt="abc bad", max_tokens=2, temperature=0, n=2,
                                            echo=True, logprobs=1)
    first, second = done.choices
    assert first.text == second.text and first.text.startswith("abc bad")
    scored = [c.logprobs.token_logprobs for c in done.choices]
    assert scored[0][0] is None and scored[1][0] is None and len(scored[0]) == len(scored[1])
    assert np.allclose(scored[0][1:], scored[1][1:], atol=1e-5)  # the prompt's copied, the rest each row's own


def test_stop_token_ids_end_the_choice(server, artifact):
    """vLLM's stop_token_ids: the choice ends "stop" before the first of them, which it leaves out."""
    model = gemma_runtime.load(artifact)
    ids = model.generate("ab", max_new_tokens=12).token_ids
    assert len(ids) >= 4, "the fixed random model should generate tokens to stop at"
    at = ids.index(ids[3])
    cut = server.client.completions.create(model="tiny", prompt="ab", max_tokens=12, temperature=0,
                                           extra_body={"stop_token_ids": [ids[3]]})
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens == at
    assert cut.choices[0].text == model.tokenizer.decode(ids[:at])


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, None),
    ({"model": "tiny", "prompt": 5}, 400, None),
    ({"model": "tiny", "prompt": "ab", "max_tokens": -1}, 400, None),
    ({"model": "tiny", "prompt": "ab", "max_tokens": "ten"}, 400, None),
    ({"model": "tiny", "prompt": "ab", "max_tokens": 10 ** 9}, 400, "context_length_exceeded"),
    ({"model": "tiny", "prompt": "ab " * 200, "max_tokens": 1}, 400, "context_length_exceeded"),
    ({"model": "tiny", "prompt": "ab", "temperature": 9}, 400, None),
    ({"model": "other", "prompt": "ab"}, 404, "model_not_found"),
    ({"model": "tiny", "prompt": "ab", "n": 129}, 400, None),
    ({"model": "tiny", "prompt": "ab", "stop_token_ids": [99999]}, 400, None),
    ({"model": "tiny", "prompt": "ab", "stop_token_ids": [-1]}, 400, None),
    ({"model": "tiny", "prompt": "ab", "stop_token_ids": [3], "response_format": {"type": "json_object"}}, 400, None),
    ({"model": "tiny", "prompt": "ab", "logprobs": 21}, 400, None),
    ({"model": "tiny", "prompt": "ab", "suffix": "cd"}, 400, "unsupported_parameter"),
    ({"model": "tiny", "prompt": "ab", "frequency_penalty": 0.5}, 400, "unsupported_parameter"),
    ({"model": "tiny", "prompt": "ab", "max_tokens": 0}, 400, None),
    ({"model": "tiny", "prompt": "ab", "logit_bias": {"x": 1}}, 400, None),
    ({"model": "tiny", "prompt": "ab", "logit_bias": {"5": 101}}, 400, None),
    ({"model": "tiny", "prompt": "ab", "logit_bias": {"99999": 1}}, 400, None),
    ({"model": "tiny", "prompt": ["ab", ""]}, 400, None),
    ({"model": "tiny", "prompt": [[1, 2], "ab"]}, 400, None),
    ({"model": "tiny", "prompt": "ab", "stream": 1}, 400, None),
    ({"model": "tiny", "prompt": [9999999]}, 400, None),
])
def test_bad_completion_requests(server, body, status, code):
    got, error = server.post("/v1/completions", body)
    assert got == status and error["error"]["message"] and error["error"]["code"] == code


@pytest.mark.parametrize("body,code", [
    ({"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "unsupported_content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "a"}], "functions": [{"name": "f"}]},
     "unsupported_parameter"),
    ({"model": "tiny", "messages": []}, None),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "a"}]}, None),
])
def test_bad_chat_requests(server, body, code):
    got, error = server.post("/v1/chat/completions", body)
    assert got == 400 and error["error"]["code"] == code


def test_a_full_queue_answers_429(artifact):
    live = LiveServer(artifact, max_batch=1, max_queue=1)
    try:
        engine = live.service.engine
        engine.stop()  # nothing runs: what is submitted stays queued
        engine.submit(engine.request("ab", 2))
        status, error = live.post("/v1/completions", {"prompt": "ab", "max_tokens": 2})
        assert status == 429 and error["error"]["code"] == "queue_full"
        assert error["error"]["type"] == "rate_limit_error"
    finally:
        live.close()


def test_load_every_request_completes_with_its_own_tokens(server, artifact):
    """64 streaming requests from 16 concurrent clients: each completes (or gets a clean 429), and
    its streamed text equals the same request's non-streamed text alone (no token lost or
    duplicated)."""
    model = gemma_runtime.load(artifact)
    rng = np.random.default_rng(0)
    prompts = ["".join(rng.choice(list("abcdefgh "), size=int(n))) for n in rng.integers(2, 30, 64)]
    expected = {p: model.generate(p, max_new_tokens=12).text for p in set(prompts)}

    def one(prompt: str) -> tuple[str, str]:
        stream = server.client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                                  stream=True)
        return prompt, "".join(c.choices[0].text for c in stream if c.choices)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, prompts, timeout=GUARD_S * 4))
    assert len(results) == 64
    mismatched = [p for p, text in results if text != expected[p]]
    assert not mismatched, mismatched[:3]


def test_openapi_describes_the_bodies_and_harmless_fields_pass(server):
    _, text, _ = server.get("/openapi.json")
    schemas = json.loads(text)["components"]["schemas"]
    assert {"prompt", "echo", "logprobs", "logit_bias"} <= set(schemas["CompletionRequest"]["properties"])
    assert {"messages", "top_logprobs"} <= set(schemas["ChatCompletionRequest"]["properties"])
    assert "choices" in schemas["CompletionResponse"]["properties"]
    status, reply = server.post("/v1/completions", {"prompt": "ab", "max_tokens": 2, "user": "me",
                                                    "metadata": {"a": "b"}, "presence_penalty": 0})
    assert status == 200, reply


def test_logit_bias_and_top_k(server):
    forced = server.post("/v1/completions", {"prompt": "ab", "max_tokens": 3, "temperature": 0,
                                             "logit_bias": {"370": 100}})[1]
    tokenizer = server.service.model.tokenizer
    assert forced["choices"][0]["text"] == tokenizer.decode([370] * 3)
    a, b = (server.post("/v1/completions", {"prompt": "ab", "max_tokens": 6, "top_k": 1, "temperature": 1.5,
                                            "seed": s})[1]["choices"][0]["text"] for s in (1, 2))
    greedy = server.post("/v1/completions", {"prompt": "ab", "max_tokens": 6, "temperature": 0})[1]
    assert a == b == greedy["choices"][0]["text"]  # top_k 1 is greedy whatever the seed


def test_tokenize_and_detokenize(server):
    tokenizer = server.service.model.tokenizer
    status, reply = server.post("/tokenize", {"prompt": "abc", "return_token_strs": True})
    assert status == 200 and reply["tokens"] == tokenizer.encode("abc") and reply["count"] == len(reply["tokens"])
    assert reply["max_model_len"] == MAX_SEQ_LEN and reply["token_strs"][0] == "<bos>"
    assert server.post("/tokenize", {"prompt": "abc", "add_special_tokens": False})[1]["tokens"] == \
        tokenizer.encode("abc", add_bos=False)
    chat = server.post("/tokenize", {"messages": [{"role": "user", "content": "abc"}]})[1]
    done = server.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "abc"}],
                                                 max_tokens=1)
    assert chat["count"] == done.usage.prompt_tokens
    assert server.post("/detokenize", {"tokens": reply["tokens"][1:]})[1] == {"prompt": "abc"}
    assert server.post("/detokenize", {"tokens": [10 ** 6]})[0] == 400
    assert server.post("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "a"}]})[0] == 400


def test_an_api_key_guards_all_but_health(artifact):
    live = LiveServer(artifact, api_key="sesame", max_batch=1, cors_origins=["https://app.example"])
    try:
        status, error = live.post("/v1/completions", {"prompt": "ab", "max_tokens": 1})
        assert status == 401 and error["error"]["code"] == "invalid_api_key"
        assert error["error"]["type"] == "authentication_error"
        assert live.post("/v1/completions", {"prompt": "ab", "max_tokens": 1},
                         {"authorization": "Bearer wrong"})[0] == 401
        assert live.get("/health")[0] == 200
        done = live.client.completions.create(model="tiny", prompt="ab", max_tokens=1)  # the client sends the key
        assert done.choices[0].finish_reason
        preflight = urllib.request.Request(live.url + "/v1/completions", method="OPTIONS", headers={
            "origin": "https://app.example", "access-control-request-method": "POST"})
        with urllib.request.urlopen(preflight, timeout=GUARD_S) as r:
            assert r.headers["access-control-allow-origin"] == "https://app.example"
    finally:
        live.close()
    _, _, headers = server_without_cors_headers(artifact)
    assert "access-control-allow-origin" not in {k.lower() for k in headers}


def server_without_cors_headers(artifact):
    live = LiveServer(artifact, max_batch=1)
    try:
        request = urllib.request.Request(live.url + "/health", headers={"origin": "https://app.example"})
        with urllib.request.urlopen(request, timeout=GUARD_S) as r:
            return r.status, r.read(), dict(r.headers)
    finally:
        live.close()


def test_a_resent_prompt_reports_its_cached_tokens(server):
    """The same prompt again finds it in its slot's cache (the engine's prefix reuse): all but its last
    token, counted in usage and /metrics."""
    body = {"prompt": [2, 41, 42, 43, 44, 45, 46, 47], "max_tokens": 3, "temperature": 0}
    first = server.client.completions.create(model="tiny", **body)
    again = server.client.completions.create(model="tiny", **body)
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == 8
    assert again.usage.prompt_tokens_details.cached_tokens == 7 and again.choices[0].text == first.choices[0].text
    _, text, _ = server.get("/metrics")
    cached = next(line for line in text.splitlines() if line.startswith("gemma_cached_prompt_tokens_total "))
    assert float(cached.split()[1]) >= 7
