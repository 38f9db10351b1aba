"""Tools through the live server on a tiny Gemma 1-style model with random weights (no native tool
tokens: Google's JSON convention): a forced call (tool_choice required or named) parses into calls
whose arguments validate against the tool's schema, streamed and not, with the `openai` package's
round trip (the call, then its result in a `tool` message); tool_choice none; bad tools and
choices are 400s naming the field."""

import json

import jsonschema
import pytest

from conftest import tiny_server_artifact
from test_server import LiveServer

MAX_SEQ_LEN = 1024  # the convention's instruction and the tools' definitions spend a token a character here
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
         "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Time", "parameters": CLOCK}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    artifact = tiny_server_artifact(tmp_path_factory.mktemp("tools"), MAX_SEQ_LEN, max_position_embeddings=MAX_SEQ_LEN)
    live = LiveServer(artifact, max_batch=4, max_queue=16)
    yield live
    live.close()


def chat(server, **options) -> tuple[int, dict]:
    return server.post("/v1/chat/completions", {"messages": MESSAGES, "tools": TOOLS, **options})


def valid_calls(calls: list) -> list[tuple[str, dict]]:
    out = []
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name, arguments = call["function"]["name"], json.loads(call["function"]["arguments"])
        jsonschema.validate(arguments, SCHEMAS[name])
        out.append((name, arguments))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_forced_calls_parse_and_validate(server, seed):
    status, body = chat(server, tool_choice="required", temperature=1.0, seed=seed)
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert len(valid_calls(choice["message"]["tool_calls"])) >= 1
    status, body = chat(server, tool_choice=NAMED, temperature=1.0, seed=seed)
    assert status == 200 and body["choices"][0]["finish_reason"] == "tool_calls"
    assert [name for name, _ in valid_calls(body["choices"][0]["message"]["tool_calls"])] == ["get_time"]


def test_one_call_without_parallel_calls(server):
    status, body = chat(server, tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=4)
    assert status == 200 and len(valid_calls(body["choices"][0]["message"]["tool_calls"])) == 1


def streamed_calls(chunks) -> tuple[list[dict], str]:
    """The calls an OpenAI client rebuilds from stream deltas (by index), and the finish reason."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "type": "function", "function": {"name": "",
                                                                                          "arguments": ""}})
            call["id"] += delta.id or ""
            call["function"]["name"] += delta.function.name or ""
            call["function"]["arguments"] += delta.function.arguments or ""
    return [calls[i] for i in sorted(calls)], chunks[-1].choices[0].finish_reason


def test_openai_round_trip_streamed_and_not(server):
    client = server.client
    options = dict(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required", temperature=1.0, seed=7)
    whole = client.chat.completions.create(**options)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls"
    calls, reason = streamed_calls(list(client.chat.completions.create(**options, stream=True)))
    assert reason == "tool_calls"
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in message.tool_calls]
    valid_calls(calls)
    # the calls' results go back; the model answers in text (tool_choice none: no call is read)
    history = [*MESSAGES, message.model_dump(exclude_none=True),
               *({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in message.tool_calls)]
    for stream in (False, True):
        answer = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, tool_choice="none",
                                                max_tokens=4, temperature=0, stream=stream)
        if stream:
            chunks = list(answer)
            assert all(not c.choices[0].delta.tool_calls for c in chunks)
            assert chunks[-1].choices[0].finish_reason == "length"
        else:
            assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.tool_calls is None


def test_tool_choice_none_writes_and_reads_no_tools(server):
    status, plain = server.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 5, "temperature": 0})
    status_none, none = chat(server, tool_choice="none", max_tokens=5, temperature=0)
    assert status == status_none == 200
    assert none["choices"][0]["message"] == plain["choices"][0]["message"]
    assert none["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    status, auto = chat(server, max_tokens=5, temperature=0)  # auto: the convention's instruction is in the prompt
    assert status == 200 and auto["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 400


@pytest.mark.parametrize("options,param,words", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools", "twice"),
    ({"tools": [{"type": "function"}]}, "tools", "function"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools",
     "object"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "tools"),
    ({"tool_choice": "sometimes"}, "tool_choice", "tool_choice"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format", "forced"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}],
      "tool_choice": "required"}, "tools", "not"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "get_time", "arguments": "{oops"}}]}]}, "messages", "not valid JSON"),
    ({"messages": [*MESSAGES, {"role": "tool", "content": "x"}]}, "messages", "tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "get_time", "arguments": "[" * 100 + "]" * 100}}]}]}, "messages", "deeper"),
])
def test_bad_tools_are_400s_naming_the_field(server, options, param, words):
    status, body = chat(server, **options)
    assert status == 400, body
    assert body["error"]["param"] == param and words in body["error"]["message"], body
