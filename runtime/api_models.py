"""The server's request and response bodies as pydantic models (OpenAI's published shapes, and
vLLM's for /tokenize and /detokenize), so that FastAPI validates them and /openapi.json
describes them. Requests are strict (a number is not a string, a boolean not an integer) and
keep the fields they do not declare in `model_extra`: the server ignores harmless ones (`user`,
`metadata`, ...) and refuses by name those that would change the answer (server.UNSUPPORTED).
Semantic checks that need the model (the vocabulary, the context, the media an artifact takes)
stay in the server."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_serializer,
                      model_validator)

from gemma_runtime.logprobs import MAX_TOP_LOGPROBS

MAX_STOP_STRINGS = 4
MAX_STOP_TOKEN_IDS = 64
MAX_CHOICES = 128  # OpenAI's bound on n
LOGIT_BIAS_LIMIT = 100.0


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(Request):
    include_usage: bool = False


def _logit_bias(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("must be an object of token ids (as strings) to biases")
    bias = {}
    for key, amount in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"key {key!r} is not a token id") from None
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                or not -LOGIT_BIAS_LIMIT <= amount <= LOGIT_BIAS_LIMIT:
            raise ValueError(f"the bias of token {key} must be a number in [-100, 100], got {amount!r}")
        bias[token] = float(amount)
    return bias


class JsonSchemaFormat(Request):
    name: str
    description: Optional[str] = None
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema the output follows")
    strict: Optional[bool] = Field(None, description="the schema is enforced either way")


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' goes with type json_schema, and only with it: {'type': 'json_schema', "
                             "'json_schema': {'name': ..., 'schema': {...}}}")
        return self


class Sampling(Request):
    """What completions and chat completions share."""

    model: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0, le=2, description="default 1")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1, description="vLLM's extension; -1 or 0: off")
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: Optional[list[Annotated[int, Field(ge=0)]]] = Field(
        None, max_length=MAX_STOP_TOKEN_IDS, description="vLLM's extension: token ids that end the generation "
        "(finish_reason stop), not part of its text or tokens")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices per prompt (the prompt prefilled once); with a "
                   "seed, choice i samples with seed + i")
    logit_bias: Optional[dict[int, float]] = Field(None, description="token id -> bias in [-100, 100], added "
                                                   "to its logit before sampling")
    frequency_penalty: Optional[float] = Field(None, description="only 0")
    presence_penalty: Optional[float] = Field(None, description="only 0")
    response_format: Optional[ResponseFormat] = Field(None, description="text, or JSON enforced by a grammar")
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return stop

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _bias(cls, value):
        return _logit_bias(value)


Prompt = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(Sampling):
    prompt: Prompt = Field(description="a string, a list of strings, a list of token ids or a list of "
                                       "token-id lists; each prompt of a list is its own choice(s)")
    max_tokens: Optional[int] = Field(None, ge=0, description="default 16; 0 only with echo")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                    description="the chosen tokens' logprobs and this many top alternatives")
    echo: bool = Field(False, description="the prompt before the completion (with its tokens' logprobs)")
    best_of: Optional[int] = Field(None, description="only n (or none)")
    suffix: Optional[str] = Field(None, description="unsupported")

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _prompt(cls, value, handler):
        return prompt_forms(value, handler)

    def prompts(self) -> list[Union[str, list[int]]]:
        """The prompts, each a string or a list of token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)


# -- chat messages ---------------------------------------------------------------------------------

class TextPart(Request):
    type: Literal["text"]
    text: str

    @field_validator("text", mode="before")
    @classmethod
    def _text(cls, value):
        if not isinstance(value, str):
            raise ValueError("a text part is {'type': 'text', 'text': <string>}")
        return value


class ImageUrl(Request):
    url: str = Field(description="a data:image/<type>;base64,... URL (the server fetches nothing)")
    detail: Optional[str] = None


class ImageUrlPart(Request):
    type: Literal["image_url"]
    image_url: ImageUrl

    @field_validator("image_url", mode="before")
    @classmethod
    def _shape(cls, value):
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise ValueError("an image_url part is {'type': 'image_url', 'image_url': "
                             "{'url': 'data:image/png;base64,...'}}")
        return value


class InputAudio(Request):
    data: str = Field(description="base64")
    format: str = Field(description="wav")


class InputAudioPart(Request):
    type: Literal["input_audio"]
    input_audio: InputAudio

    @field_validator("input_audio", mode="before")
    @classmethod
    def _shape(cls, value):
        if not isinstance(value, dict) or not isinstance(value.get("data"), str):
            raise ValueError("an input_audio part is {'type': 'input_audio', 'input_audio': "
                             "{'data': <base64>, 'format': 'wav'}}")
        return value


class OtherPart(Request):
    """A part of another type (refused by the server, which says what it takes)."""

    type: Any = None


TAKEN_PART_TYPES = ("text", "image_url", "input_audio")


def _part_type(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in TAKEN_PART_TYPES else "other"


ContentPart = Annotated[Union[Annotated[TextPart, Tag("text")], Annotated[ImageUrlPart, Tag("image_url")],
                              Annotated[InputAudioPart, Tag("input_audio")], Annotated[OtherPart, Tag("other")]],
                        Discriminator(_part_type)]


class FunctionCall(Request):
    name: str
    arguments: Union[str, dict[str, Any]] = Field(description="the arguments as a JSON text (or an object)")


class MessageToolCall(Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Request):
    role: str = Field(description="system, developer (as user), user, assistant or tool")
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[MessageToolCall]] = Field(None, description="an assistant message's calls")
    tool_call_id: Optional[str] = Field(None, description="the call a tool message answers")
    reasoning_content: Optional[str] = Field(None, description="an assistant message's thinking (the chat "
                                             "template decides whether earlier turns' thinking is kept)")


class FunctionDefinition(Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="a JSON schema of an object")
    strict: Optional[bool] = Field(None, description="forced calls are enforced either way")


class Tool(Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class ChatCompletionRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="default: the rest of the context")
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="needs logprobs")
    tools: Optional[list[Tool]] = Field(None, description="functions the model may call")
    tool_choice: Optional[ToolChoice] = Field(None, description="default auto with tools, else none; required "
                                              "and a named function are enforced by a grammar")
    parallel_tool_calls: Optional[bool] = Field(None, description="default true")
    chat_template_kwargs: Optional[dict[str, Any]] = Field(None, description="the chat template's other "
                                                           "variables, e.g. enable_thinking")


class TokenizeRequest(Request):
    """vLLM's /tokenize: a prompt, or messages rendered as /v1/chat/completions renders them."""

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[Message]] = Field(None, min_length=1)
    add_special_tokens: bool = Field(True, description="BOS first, as the server feeds a text prompt")
    return_token_strs: bool = False


class DetokenizeRequest(Request):
    model: Optional[str] = None
    tokens: list[int]


# -- responses -------------------------------------------------------------------------------------

class Response(BaseModel):
    """The base of every response body."""


class PromptTokensDetails(Response):
    cached_tokens: int  # prompt tokens found in the engine's cache (prefix reuse) instead of fed


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(Response):
    """OpenAI's legacy shape: per token, its text, logprob (None for a prompt's first), the top
    alternatives (text -> logprob) and its offset in the choice's text."""

    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(Response):
    index: int
    text: str
    finish_reason: Optional[str]
    logprobs: Optional[CompletionLogprobs] = None


class CompletionResponse(Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: Optional[list[int]]


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Response):
    content: Optional[list[TokenLogprobEntry]]


class ToolCallFunction(Response):
    name: str
    arguments: str


class ToolCall(Response):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class AssistantMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler):  # OpenAI's message has no tool_calls key when there are none
        return {k: v for k, v in handler(self).items() if v is not None or k == "content"}


class ChatChoice(Response):
    index: int
    message: AssistantMessage
    finish_reason: Optional[str]
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionResponse(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TokenizeResponse(Response):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: Optional[list[str]] = None


class DetokenizeResponse(Response):
    prompt: str


class ErrorBody(Response):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class ErrorResponse(Response):
    error: ErrorBody


def prompt_forms(value, handler):
    """A field in OpenAI's four prompt forms (a string, strings, token ids, token-id lists), none
    empty: pydantic's own error replaced by one line saying so."""
    message = "must be a non-empty string, a list of strings, a list of token ids or a list of token-id lists"
    try:
        given = handler(value)
    except ValidationError:
        raise ValueError(message) from None
    if not given or isinstance(given, list) and any(not p for p in given):
        raise ValueError(message + ", none of them empty")
    return given
