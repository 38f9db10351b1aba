"""The checkpoint's own chat template: Jinja text that the export copies into the artifact
(manifest.chat_template) and that this module renders as transformers' `apply_chat_template(...,
tokenize=False)` does: in jinja2's immutable sandbox (a template is code from the checkpoint's
author and must not reach Python objects), with trim_blocks and lstrip_blocks, the loop controls
(break, continue), the `{% generation %}` block, `raise_exception`, `strftime_now`, a `tojson`
that writes plain JSON, `namespace` and `dict`; the variables are the conversation (`messages`),
`tools`, `documents` (None), `add_generation_prompt`, the checkpoint's named special tokens
(`bos_token`, `eos_token`, ...) and any template arguments (`enable_thinking`, ...). An attribute
the sandbox refuses stops the rendering (transformers' renders it as nothing).

The template sees plain data only: dicts, lists, strings, numbers, booleans and None; anything
else is replaced by a string naming its type."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.manifest import ChatTemplateSpec

DEFAULT = "default"  # the template used unless another is chosen
TOOL_USE = "tool_use"  # the template used when tools are given, where the checkpoint names one
TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# variables the renderer sets itself: template arguments may not replace them
_RESERVED = ("messages", "tools", "documents", "add_generation_prompt")
# names a message's reasoning comes under; templates read the first (transformers fills both it and "thinking")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplate:
    """A checkpoint's chat templates by name (DEFAULT and any others, e.g. TOOL_USE), compiled, with
    the special tokens the templates see."""

    def __init__(self, sources: Mapping[str, str], special_tokens: Mapping[str, str],
                 where: Mapping[str, str] | None = None):
        """sources: template name -> Jinja text; where: template name -> where it came from (messages)."""
        where = where or {}
        if DEFAULT not in sources:
            raise RuntimeInputError(f"no {DEFAULT!r} chat template among {', '.join(sorted(sources))}")
        self.special_tokens = dict(special_tokens)
        self._templates = {name: compile_template(text, where.get(name, f"chat template {name!r}"))
                           for name, text in sources.items()}
        # the checkpoint writes tools if it names a tool-use template or its template reads `tools`
        self.writes_tools = TOOL_USE in sources or "tools" in jinja2.meta.find_undeclared_variables(
            _environment().parse(sources[DEFAULT]))

    @classmethod
    def from_artifact(cls, folder: Path | str, spec: ChatTemplateSpec) -> "ChatTemplate":
        """The templates an artifact's manifest lists (manifest.chat_template)."""
        paths = {name: Path(folder) / file for name, file in spec.files.items()}
        sources = {}
        for name, path in paths.items():
            try:
                sources[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise RuntimeInputError(f"{path}: unreadable chat template ({e})") from None
        return cls(sources, spec.special_tokens, {name: str(path) for name, path in paths.items()})

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
               chat_template_kwargs: Mapping[str, Any] | None = None, add_generation_prompt: bool = True) -> str:
        """The conversation as the template writes it (its BOS included, if it writes one).
        chat_template_kwargs are the template's other variables (`enable_thinking`, ...); they may
        replace the special tokens but not the variables set here. A template that raises (its
        raise_exception, an undefined operation, a refused attribute) is RuntimeInputError."""
        extra = dict(chat_template_kwargs or {})
        reserved = [k for k in extra if k in _RESERVED]
        if reserved:
            raise RuntimeInputError(f"chat template arguments may not set {', '.join(reserved)}")
        name = TOOL_USE if tools is not None and TOOL_USE in self._templates else DEFAULT
        variables = plain({**self.special_tokens, **extra})
        try:
            return self._templates[name].render(messages=_template_messages(messages), tools=plain(tools),
                                                documents=None, add_generation_prompt=add_generation_prompt,
                                                **variables)
        except jinja2.TemplateError as e:  # raise_exception, a refused attribute (SecurityError), undefined names
            raise RuntimeInputError(f"chat template: {e.message or type(e).__name__}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as e:  # on the messages' data
            raise RuntimeInputError(f"chat template: cannot render this conversation ({type(e).__name__}: {e})") \
                from None


def compile_template(text: str, where: str) -> jinja2.Template:
    """The template compiled in the sandbox; RuntimeInputError naming where it is when it does not parse."""
    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise RuntimeInputError(f"{where}: not a valid Jinja template (line {e.lineno}: {e.message})") from None


def plain(value: Any) -> Any:
    """value rebuilt from JSON's types (tuples stay tuples); any other object becomes "<TypeName>",
    so that no method of a caller's object is within a template's reach."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # subclasses (enums, IntEnum, ...) are cut back to the base type and lose their extra methods
    for kind, base in ((str, str.__str__), (int, int.__int__), (float, float.__float__)):
        if isinstance(value, kind):
            return base(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return plain(item())
    return f"<{type(value).__name__}>"


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The messages as a template reads them (as transformers passes them): keys whose value is None
    dropped (OpenAI clients send `content: null` beside tool calls), and a message's reasoning
    under both `reasoning_content` and `thinking`, whichever name it came under."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RuntimeInputError(f"messages[{i}] must be an object, got {type(message).__name__}")
        message = plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates want the JSON itself.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _refuse_private(names) -> None:
    for name in names:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r} "
                                                  "(names starting with '_' are refused)")


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace(), refusing attribute names that start with "_" (a path toward Python's
    internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # no named self: namespace(self=...) is an attribute
        namespace, *rest = args
        attributes = dict(*rest, **kwargs)
        _refuse_private(attributes)
        jinja2.utils.Namespace.__init__(namespace, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _refuse_private((name,))
        super().__setitem__(name, value)


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the dict type itself (whose
    class attributes a template could otherwise walk)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict:
        return dict.fromkeys(keys, value)


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks the assistant's part of a
    conversation with it (for training masks); rendered here as its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, where an attribute it refuses (`''.__class__`) stops the rendering at
    once: jinja2's own returns an undefined value that prints as nothing."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.exceptions.SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} "
                                              "object is refused")


_ENVIRONMENT: _Sandbox | None = None


def _environment() -> _Sandbox:
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_Generation, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace,
                           dict=_Dict())
        _ENVIRONMENT = env
    return _ENVIRONMENT
