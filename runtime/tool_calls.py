"""What a chat request's `tools`, `tool_choice` and `parallel_tool_calls` ask of a generation: the
tools its prompt declares, the grammar's schema of a forced call, and how its answer is read back
(response_parser.py). Bad tools or choices are 400s naming the field.

- `auto` (the default with tools): the prompt declares the tools; the answer is read for calls in
  the model's format (Gemma 4's tokens, or Google's JSON convention for Gemma 1-3).
- `none`: no tools declared and none read (Gemma 4's thoughts are still read).
- `required` / a named function: the prompt declares the tools and the grammar holds the answer
  to calls of the convention's JSON (tool_convention.py), whatever the family: a list of one or
  more `{"name", "parameters"}` objects for required (one with parallel_tool_calls false), one such
  object of the named function; `parameters` follows the tool's schema.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gemma_runtime import api_models as api
from gemma_runtime import gemma4_format, tool_convention
from gemma_runtime.api_errors import ApiError
from gemma_runtime.chat import writes_tools_natively
from gemma_runtime.response_parser import ChatOutput, Gemma4Parser, JsonCallParser, Parser, PlainParser

ANY_PARAMETERS = {"type": "object"}


@dataclasses.dataclass
class ToolPlan:
    tools: list[dict] | None  # what the prompt declares
    forced_schema: dict | None  # the grammar's schema of a forced call
    names: set[str]
    parallel: bool = True

    def output(self, model) -> ChatOutput:
        """A fresh reader of one answer of this model."""
        return ChatOutput(self._parser(model), max_calls=None if self.parallel else 1)

    def _parser(self, model) -> Parser:
        if self.forced_schema is not None:
            return JsonCallParser(self.names, tool_convention.read_calls, forced=True)
        native = writes_tools_natively(None if model.chat_template else model.chat_format(), model.chat_template)
        gemma4 = model.tokenizer is not None and model.tokenizer.token_id(gemma4_format.CALL_OPEN) is not None
        if gemma4 and (native or not self.tools):
            return Gemma4Parser(calls=bool(self.tools))
        if self.tools:  # written by the convention (or by a template in a format not read here)
            return JsonCallParser(self.names, tool_convention.read_calls, forced=False)
        return PlainParser()


def tool_plan(body: api.ChatCompletionRequest) -> ToolPlan:
    """The request's tool plan (ApiError for bad tools or choices)."""
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice if body.tool_choice is not None else "auto" if tools else "none"
    if not tools and choice != "none":
        raise ApiError(400, "'tool_choice' needs 'tools'", "tool_choice")
    names = [t["function"]["name"] for t in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ApiError(400, f"'tools' names the function {repeated[0]!r} twice", "tools")
    for i, tool in enumerate(tools):
        parameters = tool["function"].get("parameters")
        if parameters is not None and parameters.get("type", "object") != "object":
            raise ApiError(400, f"'tools[{i}].function.parameters' must be the JSON schema of an object "
                           "(type 'object')", "tools")
    if choice == "none":
        return ToolPlan(None, None, set())
    schemas = {t["function"]["name"]: _call_schema(t["function"]) for t in tools}
    forced = None
    if isinstance(choice, api.NamedToolChoice):
        if choice.function.name not in schemas:
            raise ApiError(400, f"'tool_choice' names the function {choice.function.name!r}, which is not among "
                           f"the tools ({', '.join(names)})", "tool_choice")
        forced = schemas[choice.function.name]
    elif choice == "required":
        forced = {"type": "array", "items": {"anyOf": list(schemas.values())} if len(schemas) > 1
                  else next(iter(schemas.values())), "minItems": 1}
        if body.parallel_tool_calls is False:
            forced["maxItems"] = 1
    if forced is not None and body.response_format is not None and body.response_format.type != "text":
        raise ApiError(400, "a forced tool call (tool_choice required or a named function) and a JSON "
                       "response_format cannot both hold the answer", "response_format")
    return ToolPlan(tools, forced, set(schemas), body.parallel_tool_calls is not False)


def _call_schema(function: dict[str, Any]) -> dict:
    return {"type": "object", "properties": {"name": {"const": function["name"]},
                                             "parameters": function.get("parameters") or ANY_PARAMETERS},
            "required": ["name", "parameters"], "additionalProperties": False}
