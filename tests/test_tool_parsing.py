"""Reading a chat answer back into content, reasoning_content and tool_calls (response_parser.py),
fed as a fake token stream split at every position (Gemma 4's `<|"|>` and its other markers
included); writing tools, calls and results into prompts (gemma4_format.py's hand-written layout
against the Gemma 4 test template, tool_convention.py for Gemma 1-3)."""

import json
from pathlib import Path

import pytest

from gemma_runtime import gemma4_format as g4, tool_convention
from gemma_runtime.chat import chat_prompt
from gemma_runtime.chat_template import ChatTemplate
from gemma_runtime.manifest import ChatFormat
from gemma_runtime.response_parser import ChatOutput, Gemma4Parser, JsonCallParser, PlainParser
from test_chat_template import CASES, SPECIAL_TOKENS, TEMPLATES

GEMMA4 = ChatFormat("<|turn>", "<turn|>", model_role="model", system="first_user_turn")
GEMMA3 = ChatFormat("<start_of_turn>", "<end_of_turn>", model_role="model", system="first_user_turn")
NAMES = {"get_weather", "get_time"}

# a Gemma 4 answer: a thought, text, then two calls whose strings hold the format's own markers
GEMMA4_ANSWER = ('<|channel>thought\nThe user wants {weather}: call it.<channel|>Checking.'
                 '<|tool_call>call:get_weather{city:<|"|>Paris, "FR" <tool_call|> {x:1}<|"|>,days:2,'
                 'opts:{metric:true,tags:[<|"|>a<|"|>,null]}}<tool_call|>'
                 '<|tool_call>call:get_time{city:<|"|>Rome<|"|>}<tool_call|>')
GEMMA4_CALLS = [("get_weather", {"city": 'Paris, "FR" <tool_call|> {x:1}', "days": 2,
                                 "opts": {"metric": True, "tags": ["a", None]}}),
                ("get_time", {"city": "Rome"})]


def read(parser, pieces: list[str]) -> tuple[ChatOutput, list[dict]]:
    output = ChatOutput(parser)
    deltas = [d for piece in pieces for d in output.feed(piece)] + output.finish()
    return output, deltas


def splits(text: str):
    """The text in two pieces split at every position, and one character at a time."""
    for k in range(len(text) + 1):
        yield [text[:k], text[k:]]
    yield list(text)


def calls_of(output: ChatOutput) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in output.message()["tool_calls"]]


def test_gemma4_answer_split_anywhere():
    for pieces in splits(GEMMA4_ANSWER):
        output, deltas = read(Gemma4Parser(calls=True), pieces)
        message = output.message()
        assert message["reasoning_content"] == "The user wants {weather}: call it."
        assert message["content"] == "Checking."
        assert calls_of(output) == GEMMA4_CALLS
        # the stream's deltas rebuild the same message, each call once with its index
        assert "".join(d.get("content", "") for d in deltas) == "Checking."
        assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
        streamed = [c for d in deltas for c in d.get("tool_calls", [])]
        assert [c["index"] for c in streamed] == [0, 1] and all(c["id"].startswith("call_") for c in streamed)
        assert output.finish_reason("stop") == "tool_calls" and output.finish_reason("length") == "length"


def test_gemma4_reasoning_alone_and_calls_off():
    text = "<|channel>thought\nhmm<channel|>The answer is <|tool_call>call:f{}<tool_call|> 4."
    for pieces in splits(text):
        output, _ = read(Gemma4Parser(calls=False), pieces)
        assert output.message() == {"content": "The answer is <|tool_call>call:f{}<tool_call|> 4.",
                                    "reasoning_content": "hmm", "tool_calls": None}
    output, _ = read(Gemma4Parser(calls=True), ["<|channel>thought\nstill thinking"])  # max_tokens cut it
    assert output.message()["reasoning_content"] == "still thinking" and output.message()["content"] == ""


def test_gemma4_call_cut_before_its_close():
    """A stop id ends the answer before `<tool_call|>`: a call whose arguments are whole is a call;
    a cut one is content."""
    output, _ = read(Gemma4Parser(calls=True), ['<|tool_call>call:get_time{city:<|"|>Rome<|"|>}'])
    assert calls_of(output) == [("get_time", {"city": "Rome"})]
    output, _ = read(Gemma4Parser(calls=True), ['<|tool_call>call:get_time{city:<|"|>Ro'])
    assert output.message() == {"content": '<|tool_call>call:get_time{city:<|"|>Ro', "reasoning_content": None,
                                "tool_calls": None}


def test_gemma4_arguments_as_json():
    assert json.loads(g4.arguments_json('{a:<|"|>x,y:z<|"|>,b:[1,2.5,false],"c":"q\\"r",d:{e:null}}')) == \
        {"a": "x,y:z", "b": [1, 2.5, False], "c": 'q"r', "d": {"e": None}}
    for bad in ("[1]", '{a:<|"|>x}', "{a:}"):
        with pytest.raises(ValueError):
            g4.arguments_json(bad)
    value = {"city": "Paris", "n": [1, {"k": True}]}
    assert json.loads(g4.arguments_json(g4.value(value))) == value


CONVENTION_CALLS = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {}}]'


@pytest.mark.parametrize("text,calls", [
    (CONVENTION_CALLS, [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    (' {"name": "get_time", "parameters": {"city": "Rome"}}', [("get_time", {"city": "Rome"})]),
    ('```json\n{"name": "get_time", "parameters": {}}\n```', [("get_time", {})]),
])
def test_convention_calls_split_anywhere(text, calls):
    for pieces in splits(text):
        output, deltas = read(JsonCallParser(NAMES, tool_convention.read_calls, forced=False), pieces)
        assert calls_of(output) == calls and output.message()["content"] is None
        assert [c["index"] for d in deltas for c in d.get("tool_calls", [])] == list(range(len(calls)))


@pytest.mark.parametrize("text", ["Sunny in Paris.", '{"name": "unknown", "parameters": {}}', "[1, 2]", "{not json"])
def test_convention_text_that_is_no_call_is_content(text):
    for pieces in splits(text):
        output, deltas = read(JsonCallParser(NAMES, tool_convention.read_calls, forced=False), pieces)
        assert output.message() == {"content": text, "reasoning_content": None, "tool_calls": None}
        assert "".join(d["content"] for d in deltas) == text


def test_plain_text_streams_as_it_comes():
    output = ChatOutput(JsonCallParser(NAMES, tool_convention.read_calls, forced=False))
    assert output.feed("  ") == [] and output.feed("Hi") == [{"content": "  Hi"}]
    assert ChatOutput(PlainParser()).feed("<|channel>") == [{"content": "<|channel>"}]


def test_one_call_without_parallel_calls():
    output = ChatOutput(JsonCallParser(NAMES, tool_convention.read_calls, forced=True), max_calls=1)
    output.feed(CONVENTION_CALLS)
    output.finish()
    assert [c["function"]["name"] for c in output.message()["tool_calls"]] == ["get_weather"]


@pytest.mark.parametrize("case", ["tools declared", "tool round", "tool round closed", "parallel calls",
                                  "thinking on", "thinking and tools", "earlier thoughts"])
def test_gemma4_hand_written_layout_writes_what_the_template_writes(case):
    """Without a checkpoint template, Gemma 4's layout writes tools, calls, results and the thinking
    switch as tests/chat_templates/gemma4_small.jinja does."""
    messages, kwargs = CASES[case]
    kwargs = dict(kwargs)
    tools, generation = kwargs.pop("tools", None), kwargs.pop("add_generation_prompt", True)
    template = ChatTemplate({"default": (TEMPLATES / "gemma4_small.jinja").read_text()}, SPECIAL_TOKENS)
    expected = template.render(messages, tools, kwargs, generation).removeprefix("<bos>")
    assert chat_prompt(messages, GEMMA4, None, tools, kwargs, generation) == expected


def test_gemma1_3_write_tools_by_the_convention():
    """Gemma 1-3 (hand-written or their templates, which write no tools) get the convention's turns."""
    messages, kwargs = CASES["parallel calls"]
    tools = kwargs["tools"]
    text = chat_prompt(messages, GEMMA3, None, tools)
    assert text.startswith("<start_of_turn>user\nbe brief\n\nYou have access to functions.")
    assert '"name": "get_time"' in text
    assert '[{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}, {"name": "get_time", ' \
           '"parameters": "{\\"city\\": \\"Rome\\"}"}]' in text  # as given to the renderer
    assert "```tool_output\nsunny\n```\n\n```tool_output\nnoon\n```<end_of_turn>" in text
    gemma3 = ChatTemplate({"default": (TEMPLATES / "gemma3.jinja").read_text()}, SPECIAL_TOKENS)
    assert chat_prompt(messages, None, gemma3, tools).count("<start_of_turn>user\n") == 3  # turns alternate


def served(pieces: list[str], stream: bool):
    """The server's answer (server.complete / server.stream) to a fake engine that yields a Gemma 4
    answer in these pieces."""
    import asyncio
    import types

    from gemma_runtime.engine import Event
    from gemma_runtime.server import Choice, Shape, complete, stream as stream_events

    request = types.SimpleNamespace(prompt=[2, 5], tokens=list(range(len(pieces))), cached_tokens=0,
                                    finish_reason="stop", cancel=lambda: None)
    choice = Choice(0, request, output=ChatOutput(Gemma4Parser(calls=True)))
    service = types.SimpleNamespace(name="fake", texts=None)
    shape = Shape(chat=True, stream=stream)

    async def run():
        queue = asyncio.Queue()
        for k, piece in enumerate(pieces):
            queue.put_nowait((choice, Event(piece, finish_reason="stop" if k == len(pieces) - 1 else None)))
        if not stream:
            return await complete(service, [choice], queue, shape)
        return [json.loads(line[len("data: "):]) async for line in stream_events(service, [choice], queue, shape)
                if line != "data: [DONE]\n\n"]

    return asyncio.run(run())


def test_the_server_answers_a_fake_gemma4_stream_with_reasoning_and_calls():
    pieces = [GEMMA4_ANSWER[k:k + 7] for k in range(0, len(GEMMA4_ANSWER), 7)]
    whole = served(pieces, stream=False)["choices"][0]
    assert whole["finish_reason"] == "tool_calls"
    message = whole["message"]
    assert message["reasoning_content"] == "The user wants {weather}: call it." and message["content"] == "Checking."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == \
        GEMMA4_CALLS
    chunks = served(pieces, stream=True)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == "Checking."
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == \
        [(k, c["function"]["name"], c["function"]["arguments"]) for k, c in enumerate(message["tool_calls"])]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
