"""The checkpoint's own chat template (issue 24): found where transformers finds it (an HF folder's
chat_template.jinja and additional_chat_templates/, else tokenizer_config.json's chat_template, a
string or a list of named templates; a GGUF file's tokenizer.chat_template), copied into the
artifact with its digest, and rendered by the runtime in jinja2's sandbox exactly as transformers'
`apply_chat_template(..., tokenize=False)` renders it, for every template below and every case that
template takes: one turn, multi-turn, a system prompt, no generation prompt, content parts, tools
declared, tool calls and their responses (one and parallel), thinking on and off, earlier thoughts.
Model.chat_prompt (used by the CLI and the server) gives that text without its BOS, which encoding
adds once; a checkpoint with no template keeps the hand-written layout.

The templates (tests/chat_templates/): gemma2.jinja and gemma3.jinja are Google's Gemma 1/2 and
Gemma 3 templates as published with those checkpoints, written down here from memory: no copy of
them is on this machine and the hub is out of reach, so their bytes were not compared with Google's
files. gemma4_small.jinja and gemma4_large.jinja are OURS, not Google's (no copy of Google's Gemma 4
templates was available): they follow the Gemma 4 layout of gemma_export/chat_formats.py and the
tool and thought pieces transformers' Gemma 4 response parser reads; the large one differs only in
the empty thought channel its generation prompt opens when thinking is off. The equality with
transformers holds for whatever text a template holds; the hand-written layout is checked against
them on plain conversations."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import gemma_runtime
from cli_util import cli
from gemma_export.chat_formats import CHAT_FORMATS
from gemma_export.checkpoints import open_source
from gemma_export.checkpoints.chat_template import hf_folder_template
from gemma_export.describe import verify
from gemma_export.errors import CheckpointError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime import tool_convention
from gemma_runtime.chat import render
from gemma_runtime.chat_template import ChatTemplate
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import MANIFEST_FILE
from gemma_runtime.tokenizer import Tokenizer
from test_chat_tokens import gemma1_like_tokenizer
from tiny import write_checkpoint

TEMPLATES = Path(__file__).resolve().parent / "chat_templates"
SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
GEMMA4_PIECES = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<|tool_response>": 50, "<tool_response|>": 51,
                 "<|tool_call>": 52, "<tool_call|>": 53, "<|tool>": 54, "<tool|>": 55, "<|\"|>": 56,
                 "<|channel>": 57, "<channel|>": 58, "<|think|>": 59, "<|turn>": 105, "<turn|>": 106}
WORDS = ["user", "model", "hello", "world", "be", "brief", "thought", "weather?"]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def _call(ident: str, name: str, arguments) -> dict:
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


ONE_TURN = [{"role": "user", "content": "hello"}]
MULTI_TURN = [{"role": "user", "content": " hello "}, {"role": "assistant", "content": "hi there\n"},
              {"role": "user", "content": "world"}]
SYSTEM = [{"role": "system", "content": "be brief"}, *MULTI_TURN]
TOOL_ROUND = [{"role": "user", "content": "weather?"},
              {"role": "assistant", "content": None, "tool_calls": [_call("c1", "get_weather", {"city": "Paris"})]},
              {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"}]
PARALLEL = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": "Looking.", "tool_calls": [
                _call("c1", "get_weather", {"city": "Paris", "days": 2}), _call("c2", "get_time", '{"city": "Rome"}')]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": "noon"},
            {"role": "assistant", "content": "Sunny; noon."}, {"role": "user", "content": "thanks"}]
EARLIER_THOUGHTS = [{"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "hi", "reasoning_content": "a greeting"},
                    {"role": "user", "content": "world"}]
PARTS = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}]

# case -> (messages, keyword arguments of apply_chat_template / ChatTemplate.render)
CASES = {
    "one turn": (ONE_TURN, {}),
    "multi-turn": (MULTI_TURN, {}),
    "no generation prompt": (MULTI_TURN, {"add_generation_prompt": False}),
    "system": (SYSTEM, {}),
    "content parts": (PARTS, {}),
    "tools declared": (ONE_TURN, {"tools": [WEATHER, CLOCK]}),
    "tool round": (TOOL_ROUND, {"tools": [WEATHER]}),
    "tool round closed": (TOOL_ROUND, {"tools": [WEATHER], "add_generation_prompt": False}),
    "parallel calls": (PARALLEL, {"tools": [WEATHER, CLOCK]}),
    "thinking on": (MULTI_TURN, {"enable_thinking": True}),
    "thinking off": (MULTI_TURN, {"enable_thinking": False}),
    "thinking and tools": (TOOL_ROUND, {"tools": [WEATHER], "enable_thinking": True}),
    "earlier thoughts": (EARLIER_THOUGHTS, {"enable_thinking": True}),
}
GEMMA1_3_CASES = ["one turn", "multi-turn", "no generation prompt", "tools declared", "thinking on", "thinking off",
                  "earlier thoughts"]
TEMPLATE_CASES = {"gemma2": GEMMA1_3_CASES, "gemma3": GEMMA1_3_CASES + ["system", "content parts"],
                  "gemma4_small": list(CASES), "gemma4_large": list(CASES)}
# (template, case) -> the message both renderers raise
REFUSED = {("gemma2", "system"): "System role not supported",
           ("gemma3", "tool round"): "Conversation roles must alternate user/assistant/user/assistant/..."}


def gemma4_tokenizer_json() -> str:
    """A word-level tokenizer.json with Gemma 4's special pieces (turns, thought channel, tools)."""
    from tokenizers import Tokenizer as HfTokenizer, models, pre_tokenizers

    tok = HfTokenizer(models.WordLevel({**GEMMA4_PIECES, **{w: 200 + i for i, w in enumerate(WORDS)}},
                                       unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(GEMMA4_PIECES))
    return tok.to_str()


def tokenizer_folder(folder: Path, template: str, where: str = "jinja") -> Path:
    """A folder with the tokenizer files transformers loads and the template `where` a checkpoint keeps
    it: "jinja" (chat_template.jinja) or "config" (tokenizer_config.json's chat_template)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (TEMPLATES / f"{template}.jinja").read_text()
    config = dict(SPECIAL_TOKENS)
    if template.startswith("gemma4"):
        (folder / "tokenizer.json").write_text(gemma4_tokenizer_json())
    else:
        (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
        config["tokenizer_class"] = "GemmaTokenizer"
    if where == "jinja":
        (folder / "chat_template.jinja").write_text(text)
    else:
        config["chat_template"] = text
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def transformers_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def shipped(folder: Path, out: Path) -> ChatTemplate:
    """What the runtime renders for the folder's template: read as the export reads it, its files
    written as the export writes them, loaded as the runtime loads them."""
    found = hf_folder_template(folder)
    tokenizer_file = "tokenizer.json" if (folder / "tokenizer.json").is_file() else "tokenizer.model"
    tokenizer = Tokenizer(tokenizer_file, (folder / tokenizer_file).read_bytes(), 2)
    spec, files = found.for_artifact(tokenizer, bos_id=2, eos_id=1)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return ChatTemplate.from_artifact(out, spec)


def _ours(kwargs: dict) -> dict:
    """apply_chat_template's keywords as ChatTemplate.render and Model.chat_prompt take them."""
    variables = dict(kwargs)
    return {"tools": variables.pop("tools", None), "add_generation_prompt": variables.pop("add_generation_prompt", True),
            "chat_template_kwargs": variables}


def _theirs(tokenizer, messages, kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **{"add_generation_prompt": True, **kwargs})


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, tuple[ChatTemplate, object]]:
    """template -> (ours, transformers' tokenizer), Gemma 1-3's from tokenizer_config.json and Gemma 4's
    from chat_template.jinja, as those checkpoints ship them."""
    root = tmp_path_factory.mktemp("templates")
    loaded = {}
    for name in TEMPLATE_CASES:
        folder = tokenizer_folder(root / name, name, "jinja" if name.startswith("gemma4") else "config")
        loaded[name] = (shipped(folder, root / f"{name}-artifact"), transformers_tokenizer(folder))
    return loaded


@pytest.mark.parametrize("template,case", [(t, c) for t, cases in TEMPLATE_CASES.items() for c in cases]
                         + list(REFUSED))
def test_rendering_equals_transformers(templates, template, case):
    ours, tokenizer = templates[template]
    messages, kwargs = CASES[case]
    if (template, case) in REFUSED:
        import jinja2

        with pytest.raises(jinja2.TemplateError, match="^" + REFUSED[template, case].replace(".", r"\.") + "$"):
            _theirs(tokenizer, messages, kwargs)
        with pytest.raises(RuntimeInputError, match=REFUSED[template, case].replace(".", r"\.")):
            ours.render(messages, **_ours(kwargs))
        return
    expected = _theirs(tokenizer, messages, kwargs)
    assert ours.render(messages, **_ours(kwargs)) == expected
    assert expected.startswith("<bos>") and expected.count("<bos>") == 1


def test_the_cases_tell_the_templates_apart(templates):
    """The cases reach what differs: thinking, tools and the large models' empty thought channel."""
    small, large = templates["gemma4_small"][0], templates["gemma4_large"][0]
    assert large.render(ONE_TURN) == small.render(ONE_TURN) + "<|channel>thought\n<channel|>"
    assert large.render(ONE_TURN, chat_template_kwargs={"enable_thinking": True}) == small.render(ONE_TURN, chat_template_kwargs={"enable_thinking": True})
    assert "<|think|>" in small.render(ONE_TURN, chat_template_kwargs={"enable_thinking": True}) and "<|think|>" not in small.render(ONE_TURN)
    text = small.render(*CASES["parallel calls"][:1], tools=[WEATHER, CLOCK])
    assert text.count("<|tool>declaration:") == 2 and text.count("<|tool_call>call:") == 2
    assert text.count("<|tool_response>response:") == 2 and "a greeting" not in small.render(EARLIER_THOUGHTS)
    assert small.render(TOOL_ROUND, tools=[WEATHER]).endswith("<tool_response|>")  # the model goes on in its turn


@pytest.mark.parametrize("template,family", [("gemma3", "gemma3"), ("gemma4_small", "gemma4")])
def test_the_hand_written_layout_agrees_on_plain_conversations(templates, template, family):
    ours = templates[template][0]
    for messages in (ONE_TURN, MULTI_TURN, SYSTEM):
        assert ours.render(messages) == "<bos>" + render(messages, CHAT_FORMATS[family])


def test_named_templates_in_tokenizer_config_and_tool_use_with_tools(tmp_path):
    """tokenizer_config.json's list form: "default" used, "tool_use" where tools are given (as transformers
    chooses); both files in the artifact."""
    folder = tokenizer_folder(tmp_path / "ckpt", "gemma3", "config")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    small = (TEMPLATES / "gemma4_small.jinja").read_text()
    config["chat_template"] = [{"name": "default", "template": config["chat_template"]},
                               {"name": "tool_use", "template": small}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = shipped(folder, tmp_path / "out"), transformers_tokenizer(folder)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chat_template.jinja",
                                                                    "chat_template.tool_use.jinja"]
    for messages, kwargs in (CASES["one turn"], CASES["tool round"]):
        assert ours.render(messages, **_ours(kwargs)) == _theirs(theirs, messages, kwargs)
    assert "<|tool>" in ours.render(ONE_TURN, tools=[WEATHER]) and "<start_of_turn>" in ours.render(ONE_TURN)


def test_chat_template_jinja_comes_before_tokenizer_config(tmp_path):
    folder = tokenizer_folder(tmp_path / "ckpt", "gemma3", "config")
    shutil.copy(TEMPLATES / "gemma2.jinja", folder / "chat_template.jinja")
    found = hf_folder_template(folder)
    assert found.templates == {"default": (TEMPLATES / "gemma2.jinja").read_text()}
    assert found.source == "chat_template.jinja" and found.special_tokens == SPECIAL_TOKENS


def test_special_tokens_the_config_does_not_name_are_the_tokenizers_pieces(tmp_path):
    folder = tokenizer_folder(tmp_path / "ckpt", "gemma4_small")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<turn|>"}}))
    ours = shipped(folder, tmp_path / "out")
    assert ours.special_tokens == {"eos_token": "<turn|>", "bos_token": "<bos>"}  # bos: the piece of id 2
    assert ours.render(ONE_TURN).startswith("<bos><|turn>user\n")


# -- through export, the CLI and the server -----------------------------------------------------------

@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    """A tiny Gemma 4 checkpoint shipping the large template as chat_template.jinja and, so that the
    choice shows, the small one as additional_chat_templates/tool_use.jinja; exported (onnx)."""
    root = tmp_path_factory.mktemp("gemma4-template")
    folder = tokenizer_folder(write_checkpoint("gemma4-k-eq-v", root / "ckpt"), "gemma4_large")
    (folder / "additional_chat_templates").mkdir()
    shutil.copy(TEMPLATES / "gemma4_small.jinja", folder / "additional_chat_templates" / "tool_use.jinja")
    export(folder, root / "out", ExportOptions(target="onnx", max_seq_len=96))
    return folder, root / "out"


def test_export_copies_the_templates_with_their_digests(gemma4):
    folder, out = gemma4
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 6
    assert manifest["chat_template"] == {"files": {"default": "chat_template.jinja",
                                                   "tool_use": "chat_template.tool_use.jinja"},
                                         "special_tokens": SPECIAL_TOKENS, "source": "chat_template.jinja"}
    for name, source in (("chat_template.jinja", folder / "chat_template.jinja"),
                         ("chat_template.tool_use.jinja", folder / "additional_chat_templates" / "tool_use.jinja")):
        assert (out / name).read_bytes() == source.read_bytes()
        assert manifest["files"][name]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert verify(out) == {name: "OK" for name in manifest["files"]}


def test_the_model_prompts_with_the_checkpoints_template(gemma4):
    folder, out = gemma4
    model, theirs = gemma_runtime.load(out, threads=1), transformers_tokenizer(folder)
    for case in ("system", "thinking on", "thinking off", "tool round", "parallel calls"):
        messages, kwargs = CASES[case]
        expected = _theirs(theirs, messages, kwargs)
        prompt = model.chat_prompt(messages, **_ours(kwargs))
        assert "<bos>" + prompt == expected
        ids = theirs.apply_chat_template(messages, tokenize=True, return_dict=True,
                                         **{"add_generation_prompt": True, **kwargs})["input_ids"]
        assert model.tokenizer.encode(prompt) == list(ids)  # one BOS: the tokenizer's
    assert model.chat_prompt(ONE_TURN).endswith("<|turn>model\n<|channel>thought\n<channel|>")  # the large one's
    assert model.chat_prompt(ONE_TURN, tools=[WEATHER]).endswith("<|turn>model\n")  # tool_use: the small one


def test_the_cli_chats_with_the_checkpoints_template(gemma4, capsys, monkeypatch):
    _, out = gemma4
    prompts = []
    stream = gemma_runtime.Model.stream

    def recording(self, prompt, *args, **kwargs):
        prompts.append(prompt)
        return stream(self, prompt, *args, **kwargs)

    monkeypatch.setattr(gemma_runtime.Model, "stream", recording)
    code, _, err = cli(capsys, "generate", out, "--prompt", "hello", "--chat", "--max-new-tokens", "2")
    assert code == 0, err
    monkeypatch.setattr("sys.stdin", _Lines("hello\nworld\n"))
    code, _, err = cli(capsys, "chat", out, "--system", "be brief", "--max-new-tokens", "2")
    assert code == 0, err
    first = "<|turn>user\nbe brief\n\nhello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    assert prompts[0] == "<|turn>user\nhello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    assert prompts[1] == first and prompts[2].startswith("<|turn>user\nbe brief\n\nhello<turn|>\n<|turn>model\n")
    assert prompts[2].endswith("<|turn>user\nworld<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")


class _Lines:
    def __init__(self, text: str):
        self.lines = text.splitlines(keepends=True)

    def readline(self) -> str:
        return self.lines.pop(0) if self.lines else ""


def test_the_server_renders_with_the_template_and_answers_400_when_it_refuses(gemma4):
    from test_server import LiveServer

    _, out = gemma4
    live = LiveServer(out, max_batch=2, max_queue=8)
    try:
        messages = CASES["system"][0]
        reply = live.client.chat.completions.create(model="out", messages=messages, max_tokens=2, temperature=0)
        model = gemma_runtime.load(out, threads=1)
        assert reply.usage.prompt_tokens == len(model.tokenizer.encode(model.chat_prompt(messages)))
        assert reply.usage.prompt_tokens != len(model.tokenizer.encode(render(messages, CHAT_FORMATS["gemma4"])))
        # tools, a call (its arguments as the JSON text OpenAI's clients send), its result, and thinking on:
        # the prompt is the template's, the arguments read as an object
        sent = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"][
            "arguments"])}} for c in m["tool_calls"]]} if "tool_calls" in m else m for m in TOOL_ROUND]
        reply = live.client.chat.completions.create(model="out", messages=sent, tools=[WEATHER], max_tokens=1,
                                                    extra_body={"chat_template_kwargs": {"enable_thinking": True}})
        expected = model.chat_prompt(TOOL_ROUND, tools=[WEATHER], chat_template_kwargs={"enable_thinking": True})
        assert "<|think|><|tool>declaration:get_weather" in expected and "<|tool_response>" in expected
        assert reply.usage.prompt_tokens == len(model.tokenizer.encode(expected))
        status, body = live.post("/v1/chat/completions", {"model": "out", "max_tokens": 2, "messages": [
            {"role": "user", "content": "hello"}, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]})
        assert status == 400 and body["error"]["param"] == "messages"
        assert body["error"]["message"] == ("chat template: a tool message must answer a tool call of the model "
                                            "turn before it")
    finally:
        live.close()


def test_gemma1_from_tokenizer_config_and_the_cli_refusal(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    """Gemma 1's template (in tokenizer_config.json) has no system role: the CLI says so in one line."""
    folder = shutil.copytree(tiny_checkpoints["gemma-mqa"], tmp_path / "ckpt")
    tokenizer_folder(folder, "gemma2", "config")
    export(folder, tmp_path / "out", ExportOptions(target="generic", max_seq_len=64))
    model = gemma_runtime.load(tmp_path / "out")
    assert model.manifest.chat_template.source == "tokenizer_config.json"
    assert model.chat_prompt(MULTI_TURN) == render(MULTI_TURN, CHAT_FORMATS["gemma"])
    with pytest.raises(RuntimeInputError, match="System role not supported"):
        model.chat_prompt(SYSTEM)
    code, _, err = cli(capsys, "generate", tmp_path / "out", "--prompt", "ab", "--chat", "--max-new-tokens", "1")
    assert code == 0, err
    monkeypatch.setattr("sys.stdin", _Lines("hello\n"))
    code, _, err = cli(capsys, "chat", tmp_path / "out", "--system", "be brief", "--max-new-tokens", "2")
    assert code == 2 and err.strip().splitlines() == ["error: chat template: System role not supported"]


def test_a_gguf_template_is_copied(tmp_path):
    from test_gguf import TOKENS, write_gguf

    gemma3, small = ((TEMPLATES / f"{n}.jinja").read_text() for n in ("gemma3", "gemma4_small"))
    path = tmp_path / "m.gguf"
    write_gguf(path, "gemma3", layers=1,
               meta={"tokenizer.chat_template": gemma3, "tokenizer.chat_template.tool_use": small})
    found = open_source(path).chat_template
    assert found.templates == {"default": gemma3, "tool_use": small} and found.source == "GGUF tokenizer.chat_template"
    assert found.special_tokens == {"bos_token": TOKENS[2], "eos_token": TOKENS[1], "unk_token": TOKENS[3],
                                    "pad_token": TOKENS[0]}
    manifest = export(path, tmp_path / "out", ExportOptions(target="generic", max_seq_len=32))
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == gemma3
    assert set(manifest.chat_template.files.values()) <= set(manifest.files)
    model = gemma_runtime.load(tmp_path / "out")
    assert model.chat_prompt(SYSTEM) == render(SYSTEM, CHAT_FORMATS["gemma3"])


def test_without_a_template_the_hand_written_layout_is_used(tiny_checkpoints, tmp_path):
    folder = shutil.copytree(tiny_checkpoints["gemma-mqa"], tmp_path / "ckpt")
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    manifest = export(folder, tmp_path / "out", ExportOptions(target="generic", max_seq_len=32))
    assert manifest.chat_template is None and not any("chat_template" in f for f in manifest.files)
    model = gemma_runtime.load(tmp_path / "out")
    assert model.chat_template is None
    assert model.chat_prompt(SYSTEM, chat_template_kwargs={"enable_thinking": True}) == render(SYSTEM, CHAT_FORMATS["gemma"])
    # Gemma 1-3 have no tool tokens: tools go in by Google's JSON convention (tool_convention.py)
    assert model.chat_prompt(ONE_TURN, tools=[WEATHER]) == render(
        [{"role": "user", "content": tool_convention.instruction([WEATHER]) + "hello"}], CHAT_FORMATS["gemma"])


# -- bad templates ------------------------------------------------------------------------------------

@pytest.mark.parametrize("where,content,message", [
    ("chat_template.jinja", "{% for m in messages %}{{ m.content }", r"chat_template\.jinja: not a valid Jinja "
                                                                      r"template \(line 1: "),
    ("tokenizer_config.json", {"chat_template": "{% if %}"}, r"tokenizer_config\.json: not a valid Jinja template"),
    ("tokenizer_config.json", {"chat_template": 5}, r"tokenizer_config\.json: chat_template is neither a string"),
    ("tokenizer_config.json", {"chat_template": [{"name": "tool_use", "template": "x"}]},
     r"named tool_use, none 'default'"),
    ("tokenizer_config.json", {"chat_template": [{"name": "default", "template": "x"},
                                                 {"name": "../x", "template": "y"}]}, r"'\.\./x' is not a plain name"),
])
def test_a_template_that_does_not_parse_is_an_export_error_naming_the_file(tiny_checkpoints, tmp_path, capsys, where,
                                                                          content, message):
    folder = shutil.copytree(tiny_checkpoints["gemma-mqa"], tmp_path / "ckpt")
    (folder / where).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CheckpointError, match=message):
        open_source(folder)
    code, _, err = cli(capsys, "export", folder, "-o", tmp_path / "out")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and str(folder / where) in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_named_template_that_does_not_parse_is_named_by_its_file(tmp_path):
    folder = tokenizer_folder(tmp_path / "ckpt", "gemma4_small")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{% if tools %}")
    with pytest.raises(CheckpointError, match=r"additional_chat_templates/tool_use\.jinja: not a valid Jinja template"):
        hf_folder_template(folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt: chat templates named tool_use, none 'default'"):
        hf_folder_template(folder)


@pytest.mark.parametrize("text", [
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ dict.__class__ }}",
    "{% set ns = namespace(__class__=1) %}",
    "{% set ns = namespace() %}{% set ns._private = 1 %}",
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
])
def test_the_sandbox_refuses_pythons_internals(text):
    template = ChatTemplate({"default": text}, SPECIAL_TOKENS)
    with pytest.raises(RuntimeInputError, match="unsafe|refused"):
        template.render(ONE_TURN)


def test_render_errors_are_input_errors():
    template = ChatTemplate({"default": "{{ raise_exception('no ' + messages[0].role + ' here') }}"}, SPECIAL_TOKENS)
    with pytest.raises(RuntimeInputError, match="^chat template: no user here$"):
        template.render(ONE_TURN)
    with pytest.raises(RuntimeInputError, match="may not set messages"):
        template.render(ONE_TURN, chat_template_kwargs={"messages": []})
    adds = ChatTemplate({"default": "{{ messages[0].content + 1 }}"}, SPECIAL_TOKENS)
    with pytest.raises(RuntimeInputError, match="cannot render this conversation"):
        adds.render(ONE_TURN)
    with pytest.raises(RuntimeInputError, match=r"messages\[0\] must be an object"):
        adds.render(["hello"])


def test_a_manifest_may_not_point_a_template_outside_the_artifact(gemma4, tmp_path):
    out = shutil.copytree(gemma4[1], tmp_path / "out")
    data = json.loads((out / MANIFEST_FILE).read_text())
    data["chat_template"]["files"]["default"] = "../chat_template.jinja"
    (out / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(RuntimeInputError, match="malformed manifest .*not a file name of the artifact"):
        gemma_runtime.load(out)


def test_the_runtime_renders_templates_without_torch(gemma4):
    import subprocess
    import sys

    script = r"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("gemma_export"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Blocked())
import gemma_runtime
model = gemma_runtime.load(sys.argv[1])
print(repr(model.chat_prompt([{"role": "user", "content": "hello"}])))
assert "torch" not in sys.modules
"""
    proc = subprocess.run([sys.executable, "-c", script, str(gemma4[1])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr("<|turn>user\nhello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
