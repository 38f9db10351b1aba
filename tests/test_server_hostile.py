"""The server against hostile bodies and faults (issue 26, "a server that survives"), live on
loopback: a deeply nested body is a 400 found by a scan of its bytes (never the JSON decoder's
RecursionError); a prompt whose length alone proves it beyond the context is refused without
being tokenized; a fault inside a backend step ends that step's requests with an error (a 500,
or an error chunk that ends the stream), is logged with its traceback, and the engine serves the
next request."""

import json
import logging
import random
import time
import urllib.request

import pytest

from gemma_runtime.logs import ROOT
from gemma_runtime.request_body import MAX_JSON_DEPTH, json_depth
from test_server import GUARD_S, MAX_SEQ_LEN, LiveServer, artifact  # noqa: F401  (the session's tiny artifact)

HUGE_PROMPT_CHARS = 20 * 10**6




@pytest.fixture(scope="module")
def server(artifact):
    live = LiveServer(artifact, max_batch=2, max_queue=16, max_body_bytes=32 * 2**20)
    yield live
    live.close()


def nested(depth: int) -> bytes:
    return b'{"model": "tiny", "prompt": ' + b"[" * depth + b"]" * depth + b"}"


def reference_depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(reference_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(reference_depth, value.values()), default=0)
    return 0


def random_json(rng: random.Random, depth: int = 0):
    """Strings full of what a byte scan could mistake: quotes, backslashes, brackets, escapes."""
    pick = rng.random()
    if depth > 6 or pick < 0.3:
        return "".join(rng.choice(['"', "\\", "[", "]", "{", "}", "a", " ", "\\\\", '\\"', "é", "\n"])
                       for _ in range(rng.randint(0, 6)))
    if pick < 0.65:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_json(rng, 9): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_json_depth_reads_the_bytes_as_the_parser_does():
    assert json_depth(b"") == 0 and json_depth(b'"[[["') == 0 and json_depth(b"[]") == 1
    assert json_depth(br'{"a": "\"[[[", "b": [[]]}') == 3  # an escaped quote does not end a string
    assert json_depth(br'{"a": "\\", "b": [[[]]]}') == 4  # an escaped backslash does not escape the quote
    assert json_depth(br'{"a": "\\\"[[[[", "b": 1}') == 1
    assert json_depth(b"[" * 100000 + b"]" * 100000) == 100000
    rng = random.Random(0)
    for _ in range(2000):
        value = random_json(rng)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        assert json_depth(text) == reference_depth(value), text


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_a_deeply_nested_body_is_a_400_not_a_500(server, path):
    status, error = server.post(path, nested(100000))
    assert status == 400 and error["error"]["code"] == "nested_too_deep"
    assert error["error"]["type"] == "invalid_request_error" and set(error["error"]) == {
        "message", "type", "param", "code"}
    assert "100001 levels" in error["error"]["message"] and str(MAX_JSON_DEPTH) in error["error"]["message"]
    status, error = server.post(path, nested(MAX_JSON_DEPTH - 1))  # at the limit: parsed and validated
    assert status == 400 and error["error"]["code"] is None and error["error"]["param"] in ("prompt", "messages")


def test_a_body_the_parser_refuses_is_a_400_in_openai_shape(server):
    status, error = server.post("/v1/completions", b'{"prompt": "\xff\xfe"}')  # not UTF-8
    assert status == 400 and "could not be parsed" in error["error"]["message"]
    assert error["error"]["type"] == "invalid_request_error"


@pytest.fixture
def encoded(server, monkeypatch) -> list[int]:
    """The length of every text the server's tokenizer encodes while the test runs."""
    tokenizer = server.service.model.tokenizer
    lengths, encode = [], tokenizer.encode

    def counting(text, add_bos=True):
        lengths.append(len(text))
        return encode(text, add_bos)

    monkeypatch.setattr(tokenizer, "encode", counting)
    return lengths


def test_a_huge_prompt_is_refused_before_it_is_tokenized(server, encoded):
    longest = server.service.model.tokenizer.longest_piece_chars
    assert longest == len("<start_of_turn>")  # the tiny vocabulary's longest piece
    prompt = "ab " * (HUGE_PROMPT_CHARS // 3)
    started = time.perf_counter()
    status, error = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 1})
    seconds = time.perf_counter() - started
    print(f"a {HUGE_PROMPT_CHARS / 1e6:.0f} MB prompt refused in {seconds:.3f} s")
    assert status == 400 and error["error"]["code"] == "context_length_exceeded"
    assert f"{len(prompt)} characters, so at least {1 + -(-len(prompt) // longest)} tokens" in error["error"]["message"]
    status, error = server.post("/v1/chat/completions", {"messages": [
        {"role": "user", "content": "a" * HUGE_PROMPT_CHARS}], "max_tokens": 1})
    assert status == 400 and error["error"]["code"] == "context_length_exceeded"
    assert encoded == [], "a prompt refused by its length was tokenized"


def test_a_prompt_at_the_bound_is_tokenized_and_handled_as_before(server, encoded):
    at_bound = server.service.model.tokenizer.longest_piece_chars * (MAX_SEQ_LEN - 1)  # BOS + that many tokens fit
    status, error = server.post("/v1/completions", {"prompt": "a" * at_bound, "max_tokens": 1})
    assert encoded == [at_bound]  # tokenized: its characters do not prove it too long
    assert status == 400 and error["error"]["code"] == "context_length_exceeded"
    assert f"prompt has {at_bound + 1} tokens" in error["error"]["message"]  # the tokenized count, as before
    status, _ = server.post("/v1/completions", {"prompt": "a" * (at_bound + 1), "max_tokens": 1})
    assert status == 400 and encoded == [at_bound]  # one more character: refused untokenized
    status, done = server.post("/v1/completions", {"prompt": "ab", "max_tokens": 2})
    assert status == 200 and done["choices"][0]["finish_reason"] and encoded[-1] == 2


def stream_lines(server, body: dict) -> list[str]:
    request = urllib.request.Request(server.url + "/v1/completions", json.dumps({**body, "stream": True}).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=GUARD_S) as r:
        return [line for line in r.read().decode().splitlines() if line]


def test_a_failed_step_ends_its_requests_and_the_engine_serves_on(server, monkeypatch, caplog):
    backend = server.service.model.backend
    failures, step = [], backend.step

    def faulty(*args, **kwargs):
        if failures and failures[-1] == "armed":
            failures[-1] = "raised"
            raise RuntimeError("injected fault in the backend step")
        return step(*args, **kwargs)

    monkeypatch.setattr(backend, "step", faulty)
    body = {"prompt": "ab", "max_tokens": 4, "temperature": 0}
    with caplog.at_level(logging.ERROR, logger=ROOT):
        failures.append("armed")
        status, error = server.post("/v1/completions", body)
        assert status == 500 and failures == ["raised"]
        assert error["error"]["type"] == "server_error" and error["error"]["code"] == "internal_error"
        assert "injected" not in error["error"]["message"]  # the exception stays in the log
        failures.append("armed")
        lines = stream_lines(server, body)
        assert failures == ["raised", "raised"]
        assert json.loads(lines[-1].removeprefix("data: "))["error"]["type"] == "server_error"
        assert "data: [DONE]" not in lines  # the error chunk ends the stream
    logged = [r for r in caplog.records if r.name == "gemma_runtime.engine"]
    assert len(logged) == 2 and all(r.exc_info and r.exc_info[0] is RuntimeError for r in logged)
    assert "injected fault" in caplog.text and "Traceback" in caplog.text
    status, done = server.post("/v1/completions", body)  # the engine serves the next requests
    assert status == 200 and done["usage"]["completion_tokens"] >= 1
    lines = stream_lines(server, body)
    assert lines[-1] == "data: [DONE]" and all("error" not in json.loads(x[6:]) for x in lines[:-1])
    assert server.service.engine.active == 0
