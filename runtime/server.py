"""An OpenAI-compatible server over the continuous-batching engine (FastAPI on uvicorn; extra
`[serve]`). Routes: /v1/models, /v1/completions, /v1/chat/completions (streaming as server-sent
events ending in `data: [DONE]`), /v1/embeddings (an embedding model's: server_embeddings.py; each
kind of artifact answers the other kind's routes with a 400), /tokenize and /detokenize (vLLM's
shapes), /health, /metrics (Prometheus, server_metrics.py).

Bodies are pydantic models (api_models.py), so /openapi.json describes them; every bad request gets
OpenAI's error shape with a 4xx and a message naming the field: {"error": {"message", "type",
"param", "code"}}. Fields a body does not declare are ignored, except those in UNSUPPORTED, which
would change the answer: a 400 `unsupported_parameter` naming them. A full queue answers 429; a
prompt beyond the context 400 `context_length_exceeded`; with an API key, a request without it 401
(`/health` stays open); a body over the limit 413; a body whose arrays and objects nest deeper than
MAX_JSON_DEPTH 400 `nested_too_deep` (found by a scan of its bytes before it is parsed: Python's
JSON decoder recurses). A text prompt whose length in characters alone proves it longer than the
context is refused before it is tokenized (Model.encode). A client that disconnects mid-stream cancels
its request; the engine frees the slot at its next step. Every response names the process that
served it in `x-gemma-replica`.

A completion's `prompt` may be a list (of strings or of token-id lists): each prompt is its own
engine request and its own choice, in the list's order. `n` choices per prompt (choice p * n + i is
prompt p's i-th) share the prompt's prefill: the first choice's request feeds it, the others copy
its cache row (Engine.copies); with a `seed`, choice i of a prompt samples with seed + i, so the
choices differ and each is reproducible (greedy, they are the same). `usage` counts each prompt's
tokens once and every choice's completion tokens, as OpenAI does. `stop_token_ids` (vLLM's
extension; OpenAI's `stop` takes strings only) ends a choice "stop" at any of those tokens, which
is left out of its text and tokens, as a stop string is; with a JSON grammar it is a 400 (it would
cut the JSON). `logprobs` (completions: N; chat:
`logprobs` and `top_logprobs`) are the artifact's own logits' (logprobs.py), before logit_bias and
temperature; `echo` writes the prompt before a completion and, with logprobs, its tokens' logprobs
(the first null), `max_tokens` 0 then scoring the prompt alone.

`response_format` (chat and completions): `{"type": "json_object"}` or `{"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}` holds the output to JSON by a grammar's token mask
(structured_output.py): it always parses and fits the schema, finishing "stop" at the grammar's end,
or "length" when max_tokens cuts it first. A schema the grammar engine cannot enforce is a 400
`unsupported_schema` naming its keywords (`invalid_schema` when it is not a valid schema).

Tools and reasoning (chat only; tool_calls.py, response_parser.py): `tools` and `tool_choice`
(auto, none, required, a named function) go into the prompt as the model's chat writes them, the
answer is read back into `tool_calls` (finish_reason "tool_calls") and Gemma 4's thoughts into
`reasoning_content`; a forced call is held to the tools' schemas by the grammar.

Media (chat only): a user message's `image_url` parts whose url is a `data:image/...;base64,...`
URL and its `input_audio` parts (base64 WAV) go to the model in the order they appear, each
replaced by the model's placeholder in the rendered prompt. The server fetches and reads nothing:
http(s) URLs, file: URLs and paths are refused. A request is parsed, its media decoded and encoded,
in a worker thread (asyncio.to_thread), never on the event loop, so neither this request's images
nor its tokenization hold up other requests' streams; the engine's loop only splices the result in.
/v1/models lists the artifact's `input_modalities` ("text", and "image" / "audio" when it has
those encoders).

Errors are logged (logger gemma_runtime.server): a 4xx at info (429 at warning), a 5xx at error; a
failed generation's traceback is logged by the engine. `serve(log_level=...)` sets the level of the
gemma_runtime loggers and of uvicorn's.

`Service` holds what one replica needs (the model, the engine, its name, its metrics); the handlers
take it, so the standalone app (`create_app`) and the Ray Serve deployment
(gemma_runtime/ray_serve.py) share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Sequence, Union

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gemma_runtime import api_models as api, http_errors
from gemma_runtime.api_errors import ApiError
from gemma_runtime.api_logprobs import TokenTexts
from gemma_runtime.chat_request import ChatPrompt, chat_prompt, input_modalities
from gemma_runtime.engine import Engine, Event, QueueFull, Request, default_max_batch
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from gemma_runtime.logs import configure_logging
from gemma_runtime.request_body import DepthCheckedRoute, Guard
from gemma_runtime.response_parser import ChatOutput
from gemma_runtime.server_embeddings import EmbeddingRequest, EmbeddingResponse, embeddings
from gemma_runtime.server_metrics import CONTENT_TYPE, ServerMetrics
from gemma_runtime.server_tokenize import check_model, detokenize, tokenize
from gemma_runtime.structured_output import ANY_OBJECT, StructuredOutputError, UnsupportedSchema
from gemma_runtime.tool_calls import tool_plan

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (or what fits); chat fills the context
# fields a body may carry but this server does not implement -> the values that mean "not used"
UNSUPPORTED = {
    "functions": (None, []), "function_call": (None, "none"),
    "audio": (None,), "modalities": (None, ["text"]),
    "prediction": (None,), "suffix": (None, ""), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
    "repetition_penalty": (None, 1), "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,),
    "guided_grammar": (None,), "prompt_logprobs": (None,), "best_of": (None, 1),
}
API_KEY_ENV = "GEMMA_EXPORT_API_KEY"
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_MAX_CONNECTIONS = 1024

logger = logging.getLogger(__name__)


class Service:
    """One replica: a loaded artifact, its running engine and its metrics."""

    def __init__(self, artifact: Path | str, max_batch: int | None = None, max_queue: int | None = None,
                 threads: int | None = None, name: str | None = None, replica: str | None = None,
                 speculative: str | None = None):
        """max_batch None: engine.default_max_batch; speculative: the engine's drafter (Engine's speculative=)."""
        import gemma_runtime

        self.model = gemma_runtime.load(artifact, threads=threads)
        # an embedding model has no engine: its requests run in worker threads (server_embeddings.py)
        self.engine = None if self.model.embedder else Engine(
            self.model, max_batch=default_max_batch(self.model) if max_batch is None else max_batch,
            max_queue=max_queue, speculative=speculative).start()
        self.metrics = ServerMetrics(self.engine)
        self.texts = TokenTexts(self.model.tokenizer)
        if self.model.tokenizer is not None:
            self.model.tokenizer.longest_piece_chars  # computed once, now rather than in a request
        self.name = name or Path(artifact).resolve().name
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.created = int(time.time())

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()


# -- handlers (framework-free: they take a validated body and return a dict or an async stream) ----

def models(service: Service) -> dict:
    return {"object": "list", "data": [{"id": service.name, "object": "model", "created": service.created,
                                        "owned_by": "gemma-export", "input_modalities": input_modalities(service.model)}]}


def health(service: Service) -> dict:
    return {"status": "ok", "model": service.name, "replica": service.replica}


def refuse_unsupported(body: api.Request) -> None:
    """A 400 naming the first field that asks for something this server does not do."""
    given = {**(body.model_extra or {}), **{f: getattr(body, f) for f in UNSUPPORTED if f in type(body).model_fields}}
    for field, unused in UNSUPPORTED.items():
        if field in given and given[field] not in unused:
            raise ApiError(400, f"'{field}' is not supported by this server", field, "unsupported_parameter")


@dataclasses.dataclass
class Choice:
    """One engine request of a response, and what its choice writes before the completion."""

    index: int
    request: Request
    echo: str = ""  # the prompt's text, with echo
    prompt_text: str = ""  # where the completion's text_offset starts, without echo
    output: ChatOutput | None = None  # a chat answer's reader (content, reasoning, tool calls)
    first: bool = True  # the first choice of its prompt (usage counts a prompt once)


@dataclasses.dataclass
class Shape:
    """What a response looks like."""

    chat: bool
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # choices carry logprobs
    echo: bool = False


Prompt = Union[str, list[int]]


def completion_request(service: Service, body: Union[api.CompletionRequest, api.ChatCompletionRequest]
                       ) -> tuple[list[Choice], Shape]:
    """The engine requests of a validated body, one per choice, and the response's shape (raises
    ApiError)."""
    chat = isinstance(body, api.ChatCompletionRequest)
    check_model(service, body.model)
    if service.engine is None:
        raise ApiError(400, f"the model '{service.name}' is an embedding model: it answers /v1/embeddings, not "
                       "completions", "model", "unsupported_model")
    refuse_unsupported(body)
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    sampling = dict(temperature=1.0 if body.temperature is None else body.temperature,
                    top_p=1.0 if body.top_p is None else body.top_p,
                    top_k=body.top_k if body.top_k is not None and body.top_k > 0 else None,
                    seed=body.seed, stop=stop, stop_token_ids=body.stop_token_ids or (), logit_bias=body.logit_bias,
                    json_schema=_json_schema(body.response_format))
    options = body.stream_options or api.StreamOptions()
    shape = Shape(chat, body.stream, options.include_usage)
    prompt_logprobs, plan, schema_field = None, None, "response_format"
    if chat:
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        plan = tool_plan(body)
        if plan.forced_schema is not None:
            sampling["json_schema"], schema_field = plan.forced_schema, "tools"
        media = chat_prompt(service.model, body.messages, plan.tools, body.chat_template_kwargs)
        prompts: list[tuple[Prompt, ChatPrompt | None]] = [(media.text, media)]
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    else:
        if body.max_tokens == 0 and not body.echo:
            raise ApiError(400, "max_tokens 0 generates nothing: it needs echo (to score the prompt)", "max_tokens")
        logprobs = body.logprobs
        prompt_logprobs = logprobs if body.echo else None
        prompts = [(p, None) for p in body.prompts()]
        max_tokens = body.max_tokens
        shape.echo = body.echo
    shape.logprobs = logprobs is not None
    if sampling["json_schema"] is not None and body.stop_token_ids:
        raise ApiError(400, f"'stop_token_ids' would cut the JSON that {schema_field} asks for", "stop_token_ids")
    choices = []
    seeds = [None if body.seed is None else body.seed + i for i in range(1, body.n)]
    for p, (prompt, media) in enumerate(prompts):
        request = _engine_request(service, prompt, media, max_tokens, logprobs, prompt_logprobs, sampling, chat,
                                  schema_field)
        if max_tokens is None and not chat:  # the runtime's rule: a default budget shrinks to what fits
            request.max_new_tokens = min(request.max_new_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
        text = "" if chat else _prompt_text(service, prompt)
        for i, each in enumerate([request, *service.engine.copies(request, seeds)]):
            choices.append(Choice(p * body.n + i, each, text if shape.echo else "", text,
                                  plan and plan.output(service.model), first=i == 0))
    return choices, shape


def _json_schema(response_format: api.ResponseFormat | None) -> dict | None:
    """The schema a response_format holds the output to (None: free text)."""
    if response_format is None or response_format.type == "text":
        return None
    return ANY_OBJECT if response_format.type == "json_object" else response_format.json_schema.schema_


def _engine_request(service: Service, prompt: Prompt, media: ChatPrompt | None, max_tokens: int | None,
                    logprobs: int | None, prompt_logprobs: int | None, sampling: dict, chat: bool,
                    schema_field: str) -> Request:
    param = "messages" if chat else "prompt"
    try:
        return service.engine.request(prompt, max_tokens, images=media and media.images, audio=media and media.audio,
                                      logprobs=logprobs, prompt_logprobs=prompt_logprobs, **sampling)
    except ContextLengthExceeded as e:
        raise ApiError(400, str(e), param, "context_length_exceeded") from None
    except StructuredOutputError as e:
        code = ("unsupported_schema" if e.features else "invalid_schema") if isinstance(e, UnsupportedSchema) else None
        raise ApiError(400, f"{schema_field}: {e}", schema_field, code) from None
    except RuntimeInputError as e:
        field = next((f for f in ("logit_bias", "stop_token_ids") if str(e).startswith(f)), param)
        raise ApiError(400, str(e), field) from None


def _prompt_text(service: Service, prompt: Prompt) -> str:
    """A prompt as text: as given, or its token ids decoded."""
    if isinstance(prompt, str):
        return prompt
    tokenizer = service.model.tokenizer
    return "" if tokenizer is None else tokenizer.decode([t for t in prompt if t != tokenizer.bos_id])


def submit(service: Service, choices: Sequence[Choice]) -> asyncio.Queue:
    """Submits every choice's request; returns the queue their (choice, event) pairs arrive on. A
    full queue cancels those already submitted."""
    queue: asyncio.Queue[tuple[Choice, Event]] = asyncio.Queue()
    for choice in choices:
        attach(choice, queue)
    try:
        for choice in choices:
            service.engine.submit(choice.request)
        return queue
    except QueueFull as e:
        for choice in choices:
            choice.request.cancel()
        raise ApiError(429, f"{e}; retry later", None, "queue_full", "rate_limit_error") from None


def attach(choice: Choice, queue: asyncio.Queue) -> None:
    """Routes the request's events from the engine's thread into this event loop (before submit)."""
    loop = asyncio.get_running_loop()
    request = choice.request

    def deliver(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (choice, event))
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            request.cancel()

    request.on_event = deliver


async def events(choices: Sequence[Choice], queue: asyncio.Queue) -> AsyncIterator[tuple[Choice, Event]]:
    """The choices' events as they come, until each has finished; cancels the requests still
    running if the reader goes away."""
    running = len(choices)
    try:
        while running:
            choice, event = await queue.get()
            yield choice, event
            running -= event.finish_reason is not None
    finally:
        for choice in choices:
            if choice.request.finish_reason is None:
                choice.request.cancel()


def usage(choices: Sequence[Choice]) -> dict:
    """Each prompt's tokens (and those of them cached) counted once, as OpenAI does with n > 1;
    every choice's completion tokens."""
    prompt = sum(len(c.request.prompt) for c in choices if c.first)
    completion = sum(len(c.request.tokens) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(c.request.cached_tokens for c in choices if c.first)}}


def _failed(event: Event) -> ApiError:
    """The 500 of a request the engine failed (its step raised: the engine logged the traceback);
    the exception's text stays in the log, not in the answer to a client."""
    return ApiError(500, "generation failed: an internal error happened in the engine (the server's log has "
                    "its traceback)", kind="server_error", code="internal_error")


def _prompt_logprobs(service: Service, choice: Choice) -> dict | None:
    """The legacy logprobs of an echoed prompt, or None where the request scored no prompt."""
    request = choice.request
    if request.prompt_logprobs is None:
        return None
    return service.texts.legacy(request.prompt, request.prompt_token_logprobs)


async def complete(service: Service, choices: Sequence[Choice], queue: asyncio.Queue, shape: Shape) -> dict:
    texts: dict[int, list[str]] = {c.index: [] for c in choices}
    reasons, scored = {}, {c.index: [] for c in choices}
    async for choice, event in events(choices, queue):
        if event.finish_reason == "error":
            raise _failed(event)
        texts[choice.index].append(event.text)
        scored[choice.index] += event.logprobs
        reasons[choice.index] = event.finish_reason
    out = []
    for c in choices:
        text = "".join(texts[c.index])
        if shape.chat:
            logprobs = {"content": service.texts.chat(scored[c.index])} if shape.logprobs else None
            c.output.feed(text)
            c.output.finish()
            out.append(api.ChatChoice(index=c.index, message=api.AssistantMessage(**c.output.message()),
                                      finish_reason=c.output.finish_reason(reasons[c.index]), logprobs=logprobs))
            continue
        logprobs = None
        if shape.logprobs:
            generated = [e.token for e in scored[c.index]]
            if shape.echo:
                logprobs = service.texts.legacy(c.request.prompt + generated,
                                                c.request.prompt_token_logprobs + scored[c.index])
            else:
                logprobs = service.texts.legacy(generated, scored[c.index], len(c.prompt_text))
        out.append(api.CompletionChoice(index=c.index, text=c.echo + text, finish_reason=reasons[c.index],
                                        logprobs=logprobs))
    ident, created = _ident(shape.chat), int(time.time())
    kind = api.ChatCompletionResponse if shape.chat else api.CompletionResponse
    return kind(id=ident, created=created, model=service.name, choices=out, usage=usage(choices)).model_dump()


async def stream(service: Service, choices: Sequence[Choice], queue: asyncio.Queue, shape: Shape
                 ) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, `[DONE]` last; each chunk one choice's."""
    chat = shape.chat
    ident, created = _ident(chat), int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"
    offsets = {c.index: (0 if shape.echo else len(c.prompt_text)) for c in choices}

    def chunk(choice: Choice, piece: str | dict, reason: str | None, event: Event | None = None,
              first: bool = False) -> str:
        """piece: a completion's text, a chat answer's delta."""
        scored = event.logprobs if event is not None else ()
        if chat:
            delta = {"role": "assistant", "content": ""} if first else piece
            logprobs = {"content": service.texts.chat(scored)} if shape.logprobs and not first else None
            body_choice = {"index": choice.index, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
        else:
            logprobs = None
            if shape.logprobs and scored:
                logprobs = service.texts.legacy([e.token for e in scored], scored, offsets[choice.index])
                offsets[choice.index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
            body_choice = {"index": choice.index, "text": piece, "finish_reason": reason, "logprobs": logprobs}
        body = {"id": ident, "object": kind, "created": created, "model": service.name, "choices": [body_choice]}
        if shape.include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    def echo_chunk(choice: Choice) -> str:
        body_choice = {"index": choice.index, "text": choice.echo, "finish_reason": None,
                       "logprobs": _prompt_logprobs(service, choice) if shape.logprobs else None}
        if body_choice["logprobs"] is not None and choice.request.prompt:
            offsets[choice.index] = sum(len(t) for t in body_choice["logprobs"]["tokens"])
        body = {"id": ident, "object": kind, "created": created, "model": service.name, "choices": [body_choice]}
        return f"data: {json.dumps(body)}\n\n"

    if chat:
        for choice in choices:
            yield chunk(choice, "", None, first=True)
    started: set[int] = set()
    async for choice, event in events(choices, queue):
        if event.finish_reason == "error":
            error = _failed(event)
            log_error(error)
            yield f"data: {json.dumps(error.body())}\n\n"
            return
        if shape.echo and choice.index not in started:  # the prompt (and its logprobs) is complete now
            started.add(choice.index)
            yield echo_chunk(choice)
        if chat:  # the deltas the text makes certain, the first with the event's logprobs
            deltas = choice.output.feed(event.text) + (choice.output.finish() if event.finish_reason else [])
            for k, delta in enumerate(deltas or ([{}] if event.logprobs else [])):
                yield chunk(choice, delta, None, event if k == 0 else None)
        elif event.text or event.logprobs:
            yield chunk(choice, event.text, None, event)
        if event.finish_reason is not None:
            reason = choice.output.finish_reason(event.finish_reason) if chat else event.finish_reason
            yield chunk(choice, {} if chat else "", reason)
    if shape.include_usage:
        body = {"id": ident, "object": kind, "created": created, "model": service.name, "choices": [],
                "usage": usage(choices)}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


def _ident(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


# -- HTTP: the routes as functions of a Service (the standalone app and the Ray Serve deployment
# both call these) --------------------------------------------------------------------------------

def _headers(service: Service) -> dict[str, str]:
    return {"x-gemma-replica": service.replica}


def log_error(e: ApiError) -> None:
    level = logging.ERROR if e.status >= 500 else logging.WARNING if e.status == 429 else logging.INFO
    logger.log(level, "%d %s: %s", e.status, e.code or e.kind, e.message)


def error_response(service: Service, e: ApiError) -> JSONResponse:
    log_error(e)
    return JSONResponse(e.body(), status_code=e.status, headers=_headers(service))


async def completion_response(service: Service, body: Union[api.CompletionRequest, api.ChatCompletionRequest]):
    try:
        # tokenization and any media's decoding and encoding: off the event loop
        choices, shape = await asyncio.to_thread(completion_request, service, body)
        queue = submit(service, choices)
        if shape.stream:
            return StreamingResponse(stream(service, choices, queue, shape), media_type="text/event-stream",
                                     headers={**_headers(service), "cache-control": "no-cache"})
        return JSONResponse(await complete(service, choices, queue, shape), headers=_headers(service))
    except ApiError as e:
        return error_response(service, e)


async def tokenizer_response(service: Service, body: Union[api.TokenizeRequest, api.DetokenizeRequest]):
    try:
        work = tokenize if isinstance(body, api.TokenizeRequest) else detokenize
        return JSONResponse(await asyncio.to_thread(work, service, body), headers=_headers(service))
    except ApiError as e:
        return error_response(service, e)


async def embeddings_response(service: Service, body: EmbeddingRequest):
    try:
        check_model(service, body.model)
        return JSONResponse(await asyncio.to_thread(embeddings, service, body), headers=_headers(service))
    except ApiError as e:
        return error_response(service, e)


def models_response(service: Service) -> JSONResponse:
    return JSONResponse(models(service), headers=_headers(service))


def health_response(service: Service) -> JSONResponse:
    return JSONResponse(health(service), headers=_headers(service))


def metrics_response(service: Service) -> Response:
    return Response(service.metrics.text(), media_type=CONTENT_TYPE, headers=_headers(service))


ERROR_RESPONSES = {400: {"model": api.ErrorResponse}, 401: {"model": api.ErrorResponse},
                   404: {"model": api.ErrorResponse}, 413: {"model": api.ErrorResponse},
                   429: {"model": api.ErrorResponse}}


def install_error_handlers(app: FastAPI, service: Service | None = None) -> None:
    """OpenAI's error shape for bodies that fail validation and for the routing errors; service
    (for the replica header) may be None where it is not known when the app is made (Ray)."""
    headers = (lambda: _headers(service)) if service is not None else dict

    def respond(e: ApiError) -> JSONResponse:
        log_error(e)
        return JSONResponse(e.body(), status_code=e.status, headers=headers())

    http_errors.install(app, respond)


def create_app(service: Service, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """The standalone FastAPI app over one Service; api_key None: open (see serve for the
    environment variable); cors_origins: browser origins allowed (none by default)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="gemma-export", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.router.route_class = DepthCheckedRoute

    @app.post("/v1/completions", response_model=api.CompletionResponse, responses=ERROR_RESPONSES)
    async def completions(body: api.CompletionRequest):
        return await completion_response(service, body)

    @app.post("/v1/chat/completions", response_model=api.ChatCompletionResponse, responses=ERROR_RESPONSES)
    async def chat_completions(body: api.ChatCompletionRequest):
        return await completion_response(service, body)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def embeddings_route(body: EmbeddingRequest):
        return await embeddings_response(service, body)

    @app.post("/tokenize", response_model=api.TokenizeResponse, responses=ERROR_RESPONSES)
    async def tokenize_route(body: api.TokenizeRequest):
        return await tokenizer_response(service, body)

    @app.post("/detokenize", response_model=api.DetokenizeResponse, responses=ERROR_RESPONSES)
    async def detokenize_route(body: api.DetokenizeRequest):
        return await tokenizer_response(service, body)

    @app.get("/v1/models")
    async def list_models():
        return models_response(service)

    @app.get("/health")
    async def get_health():
        return health_response(service)

    @app.get("/metrics")
    async def get_metrics():
        return metrics_response(service)

    install_error_handlers(app, service)
    app.add_middleware(Guard, respond=lambda error: error_response(service, error), api_key=api_key or None,
                       max_body_bytes=max_body_bytes)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # outermost, so that a browser's preflight and a refused request both carry the CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    return app


def serve(artifact: Path | str, host: str = "127.0.0.1", port: int = 8000, max_batch: int | None = None,
          max_queue: int | None = None, threads: int | None = None, log_level: str = "warning",
          api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          cors_origins: Sequence[str] = (), max_connections: int = DEFAULT_MAX_CONNECTIONS,
          speculative: str | None = None) -> None:
    """api_key None: the environment's GEMMA_EXPORT_API_KEY, if set. Beyond max_connections open
    connections uvicorn answers 503 (an idle or trickling client holds one)."""
    import uvicorn

    configure_logging(log_level)
    service = Service(artifact, max_batch=max_batch, max_queue=max_queue, threads=threads, speculative=speculative)
    app = create_app(service, api_key or os.environ.get(API_KEY_ENV), max_body_bytes, cors_origins)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=max_connections)
