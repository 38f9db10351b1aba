"""Structured outputs through the live server (response_format, gemma_runtime/structured_output.py)
on a tiny model with random weights, whose free text is garbage: the grammar alone makes its output
JSON that parses and fits the schema (checked with jsonschema), streamed or not, on chat and
completions, beside unconstrained rows in the same batch; max_tokens cuts it with "length"; a
schema the grammar engine cannot enforce is a 400 naming the keyword; a grammar that fails ends its
request alone."""

import concurrent.futures
import json

import jsonschema
import numpy as np
import pydantic
import pytest

from gemma_runtime.structured_output import ANY_OBJECT, GrammarError, JsonConstraint, JsonGrammars
from conftest import tiny_server_artifact
from test_server import LiveServer

MAX_SEQ_LEN = 160
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-s]{1,6}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 2},
        "note": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "note", "member"],
    "additionalProperties": False,
}
POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}},
         "required": ["x"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


def schema_format(schema: dict, name: str = "person") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tiny_server_artifact(tmp_path_factory.mktemp("structured"), MAX_SEQ_LEN), max_batch=4,
                      max_queue=16)
    yield live
    live.close()


def chat(server, response_format: dict | None, **options) -> dict:
    status, body = server.post("/v1/chat/completions", {"messages": MESSAGES, "response_format": response_format,
                                                        **options})
    assert status == 200, body
    return body["choices"][0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_output_parses_and_fits_the_schema(server, seed):
    choice = chat(server, schema_format(PERSON), temperature=1.0, seed=seed)
    jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    assert choice["finish_reason"] == "stop"


def test_n_choices_each_follow_the_schema_with_their_own_seed(server):
    status, body = server.post("/v1/chat/completions", {"messages": MESSAGES, "response_format": schema_format(PERSON),
                                                        "temperature": 1.0, "seed": 0, "n": 3})
    assert status == 200, body
    contents = [c["message"]["content"] for c in body["choices"]]
    for content in contents:
        jsonschema.validate(json.loads(content), PERSON)
    assert contents == [chat(server, schema_format(PERSON), temperature=1.0, seed=i)["message"]["content"]
                        for i in range(3)]


def test_openai_parse_with_a_pydantic_model(server):
    class Point(pydantic.BaseModel):
        x: int = pydantic.Field(ge=-9, le=9)
        y: bool

    done = server.client.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=Point,
                                                temperature=0)
    assert isinstance(done.choices[0].message.parsed, Point) and done.choices[0].finish_reason == "stop"


def closing_brace(server) -> dict:
    """A logit bias that favours "}" (the tiny vocabulary spells it by its byte)."""
    return {str(server.service.model.tokenizer.token_id("<0x7D>")): 100}


def test_json_object_mode(server):
    """The mask forbids "}" as the first token, however the bias favours it, and ends the grammar after it."""
    choice = chat(server, {"type": "json_object"}, temperature=0, logit_bias=closing_brace(server))
    assert choice["message"]["content"] == "{}" and choice["finish_reason"] == "stop"
    sampled = chat(server, {"type": "json_object"}, temperature=1.0, seed=3, max_tokens=40)
    if sampled["finish_reason"] == "stop":
        assert isinstance(json.loads(sampled["message"]["content"]), dict)
    else:
        assert sampled["finish_reason"] == "length" and sampled["message"]["content"].startswith("{")


def test_max_tokens_cuts_it_with_length(server):
    status, body = server.post("/v1/chat/completions", {"messages": MESSAGES, "response_format": schema_format(PERSON),
                                                        "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and '{"name": "'.startswith(choice["message"]["content"])


def test_streamed_equals_whole(server):
    whole = chat(server, schema_format(PERSON), temperature=1.0, seed=5)["message"]["content"]
    chunks = list(server.client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=1.0, seed=5,
                                                        response_format=schema_format(PERSON), stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole and chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(streamed), PERSON)


def test_completions_take_a_response_format(server):
    done = server.client.completions.create(model="tiny", prompt="abc", max_tokens=60, temperature=0,
                                            extra_body={"response_format": schema_format(POINT, "point")})
    jsonschema.validate(json.loads(done.choices[0].text), POINT)


def test_a_batch_mixes_schemas_and_free_rows(server):
    """Each row keeps its own grammar or none: the free rows' text is what they give alone."""
    alone = chat(server, None, temperature=0, max_tokens=12)["message"]["content"]
    jobs = [schema_format(PERSON), None, schema_format(POINT, "point"), {"type": "json_object"}, None,
            schema_format(PERSON)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(chat, server, job, temperature=0, max_tokens=12 if job is None else None,
                               **({"logit_bias": closing_brace(server)} if job == {"type": "json_object"} else {}))
                   for job in jobs]
        choices = [f.result() for f in futures]
    for job, choice in zip(jobs, choices):
        content = choice["message"]["content"]
        if job is None:
            assert content == alone
        elif job["type"] == "json_schema":
            jsonschema.validate(json.loads(content), job["json_schema"]["schema"])
            assert choice["finish_reason"] == "stop"
        else:
            assert content == "{}" and choice["finish_reason"] == "stop"


@pytest.mark.parametrize("response_format, code, named", [
    (schema_format({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}), "unsupported_schema",
     "uniqueItems"),
    (schema_format({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}), "unsupported_schema",
     "not"),
    (schema_format({"type": "frog"}), "invalid_schema", "frog"),
    ({"type": "json_schema"}, None, "json_schema"),
    ({"type": "xml"}, None, "response_format"),
])
def test_a_schema_it_cannot_enforce_is_a_400_naming_why(server, response_format, code, named):
    status, body = server.post("/v1/chat/completions", {"messages": MESSAGES, "response_format": response_format})
    assert status == 400 and body["error"]["param"] == "response_format" and body["error"]["code"] == code
    assert named in body["error"]["message"]


def test_the_tokenizer_view_is_built_once_and_grammars_are_cached(server):
    engine = server.service.engine
    assert engine.json_grammars() is engine.json_grammars()
    grammars = JsonGrammars(server.service.model.tokenizer, 384, {1, 107}, cached_schemas=2)
    for schema in (PERSON, POINT, PERSON, ANY_OBJECT):
        grammars.constraint(schema)
    assert list(grammars._compiled) == [json.dumps(PERSON), json.dumps(ANY_OBJECT)]


def test_a_failing_grammar_ends_its_request_alone(server, monkeypatch):
    def refuse(constraint, token):
        raise GrammarError("the grammar refused a token (a stand-in failure)")

    monkeypatch.setattr(JsonConstraint, "accept", refuse)
    alone = chat(server, None, temperature=0, max_tokens=12)["message"]["content"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        failed = pool.submit(server.post, "/v1/chat/completions", {"messages": MESSAGES,
                                                                   "response_format": schema_format(POINT, "point")})
        free = pool.submit(chat, server, None, temperature=0, max_tokens=12)
        status, body = failed.result()
        assert status == 500 and body["error"]["code"] == "internal_error"
        assert free.result()["message"]["content"] == alone


def test_marker_pieces_never_spell_text(server):
    """Inside a string any text may come, but never <start_of_turn>, <unused4> or a stop id."""
    tokenizer = server.service.model.tokenizer
    constraint = server.service.engine.json_grammars().constraint({"type": "string"})
    constraint.accept(tokenizer.token_id("<0x22>"))  # the opening quote
    allowed = np.isfinite(constraint.mask(np.zeros(384, np.float32)))
    assert allowed[tokenizer.token_id("a")] and allowed[tokenizer.token_id("<0x41>")]
    assert not allowed[[106, 107, 4, 1, 2]].any() and tokenizer.marker_ids() >= {0, 1, 2, 3, 4, 106, 107}
