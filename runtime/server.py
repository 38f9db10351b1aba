"""An OpenAI-compatible HTTP server over the continuous-batching engine (FastAPI on uvicorn;
extra `[serve]`). Routes: /v1/models, /v1/completions, /v1/chat/completions (streaming as
server-sent events ending in `data: [DONE]`), /health, /metrics (Prometheus text).

Requests are parsed by hand, not by a schema library, so that every bad request gets OpenAI's
error shape with a 4xx and a message naming the field: {"error": {"message", "type", "param",
"code"}}. A full queue answers 429; a prompt beyond the context 400 `context_length_exceeded`.
A client that disconnects mid-stream cancels its request; the engine frees the slot at its next
step. Every response names the process that served it in `x-gemma-replica`.

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

`Service` holds what one replica needs (the model, the engine, its name); the handlers take it,
so the standalone app (`create_app`) and the Ray Serve deployment (gemma_runtime/ray_serve.py)
share them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from gemma_runtime.chat import media_placeholder
from gemma_runtime.engine import Engine, Event, QueueFull, Request
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from gemma_runtime.logs import configure_logging

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (or what fits); chat fills the context
UNSUPPORTED = {  # field -> the value it may have (anything else is refused)
    "n": 1, "best_of": 1, "logprobs": None, "top_logprobs": None, "echo": False, "suffix": None,
    "tools": None, "tool_choice": None, "functions": None, "function_call": None, "logit_bias": None,
    "response_format": None, "audio": None, "modalities": None, "prediction": None,
}
MEDIA_PARTS = ("image_url", "input_image", "input_audio", "image", "audio", "file", "video_url")
TAKEN_PARTS = {"image_url": "image", "input_audio": "audio"}  # content part type -> modality
IMAGE_TYPES = ("png", "jpeg", "jpg", "gif", "bmp", "webp", "tiff")  # data:image/<type> (media/images.py reads them)
AUDIO_FORMATS = ("wav",)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Service:
    """One replica: a loaded artifact and its running engine."""

    def __init__(self, artifact: Path | str, max_batch: int = 8, max_queue: int | None = None,
                 threads: int | None = None, name: str | None = None, replica: str | None = None):
        import gemma_runtime

        self.model = gemma_runtime.load(artifact, threads=threads)
        self.engine = Engine(self.model, max_batch=max_batch, max_queue=max_queue).start()
        self.name = name or Path(artifact).resolve().name
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.created = int(time.time())

    def close(self) -> None:
        self.engine.stop()


# -- handlers (framework-free: they take a parsed body and return a dict or an async stream) ----

def models(service: Service) -> dict:
    return {"object": "list", "data": [{"id": service.name, "object": "model", "created": service.created,
                                        "owned_by": "gemma-export", "input_modalities": input_modalities(service)}]}


def input_modalities(service: Service) -> list[str]:
    """"text", then each modality the artifact has an encoder for."""
    section = service.model.manifest.multimodal or {}
    return ["text", *(m for m in ("image", "audio") if m in section)]


def health(service: Service) -> dict:
    return {"status": "ok", "model": service.name, "replica": service.replica}


def metrics(service: Service) -> str:
    engine, m = service.engine, service.engine.metrics
    uptime = max(time.perf_counter() - m.started, 1e-9)
    lines = [
        ("gemma_queue_depth", "gauge", "requests waiting for a slot", len(engine.waiting)),
        ("gemma_active_slots", "gauge", "requests being generated", engine.active),
        ("gemma_max_slots", "gauge", "KV-cache slots (--max-batch)", engine.max_batch),
        ("gemma_requests_total", "counter", "requests accepted", m.requests),
        ("gemma_requests_rejected_total", "counter", "requests refused because the queue was full", m.rejected),
        ("gemma_requests_finished_total", "counter", "requests finished", m.finished),
        ("gemma_prompt_tokens_total", "counter", "prompt tokens fed", m.prompt_tokens),
        ("gemma_generated_tokens_total", "counter", "tokens generated", m.generated_tokens),
        ("gemma_generated_tokens_per_second", "gauge", "tokens generated per second since start",
         m.generated_tokens / uptime),
        ("gemma_engine_steps_total", "counter", "engine calls", m.steps),
        ("gemma_time_to_first_token_seconds_sum", "counter", "sum of times to first token", m.ttft_sum_s),
        ("gemma_time_to_first_token_seconds_count", "counter", "requests with a first token", m.ttft_count),
    ]
    out = []
    for name, kind, text, value in lines:
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
    return "\n".join(out) + "\n"


def completion_request(service: Service, body: Any, chat: bool) -> tuple[Request, dict]:
    """The engine request for a parsed JSON body, and what the response needs (raises ApiError)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    if model not in (None, service.name):
        raise ApiError(404, f"the model '{model}' does not exist; this server has '{service.name}'", "model",
                       "model_not_found")
    for field, allowed in UNSUPPORTED.items():
        value = body.get(field)
        if value is not None and value != allowed and not (field == "logprobs" and value is False):
            raise ApiError(400, f"'{field}' is not supported by this server", field, "unsupported_parameter")
    media = ChatPrompt("")
    if chat:
        media = _chat_prompt(service, body.get("messages"))
        prompt = media.text
        max_tokens = _integer(body, "max_completion_tokens", None)
        max_tokens = _integer(body, "max_tokens", None) if max_tokens is None else max_tokens
    else:
        prompt = _text_prompt(body.get("prompt"))
        max_tokens = _integer(body, "max_tokens", None)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise ApiError(400, "top_p must be greater than 0", "top_p")
    seed = _integer(body, "seed", None)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4):
        raise ApiError(400, "'stop' must be a string or a list of at most 4 strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object with a boolean include_usage", "stream_options")
    try:
        request = service.engine.request(prompt, max_tokens, temperature=temperature, top_p=top_p,
                                         seed=seed, stop=stop or (), images=media.images, audio=media.audio)
    except ContextLengthExceeded as e:
        raise ApiError(400, str(e), "messages" if chat else "prompt", "context_length_exceeded") from None
    except RuntimeInputError as e:
        raise ApiError(400, str(e), "messages" if chat else "prompt") from None
    if max_tokens is None and not chat:  # the runtime's rule: a default budget shrinks to what fits
        request.max_new_tokens = min(request.max_new_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
    return request, {"stream": stream, "include_usage": options.get("include_usage", False), "chat": chat}


def submit(service: Service, request: Request) -> asyncio.Queue:
    """Submits the request; returns the queue its events arrive on."""
    queue = attach(request)
    try:
        service.engine.submit(request)
        return queue
    except QueueFull as e:
        raise ApiError(429, f"{e}; retry later", None, "queue_full", "rate_limit_error") from None


def attach(request: Request) -> asyncio.Queue:
    """Routes the request's events from the engine's thread into this event loop (before submit)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def deliver(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            request.cancel()

    request.on_event = deliver
    return queue


async def events(request: Request, queue: asyncio.Queue) -> AsyncIterator[Event]:
    """The request's events as they come; cancels the request if the reader goes away."""
    try:
        while True:
            event = await queue.get()
            yield event
            if event.finish_reason is not None:
                return
    finally:
        if request.finish_reason is None:
            request.cancel()


def usage(request: Request) -> dict:
    n = len(request.tokens)
    return {"prompt_tokens": len(request.prompt), "completion_tokens": n, "total_tokens": len(request.prompt) + n}


async def complete(service: Service, request: Request, queue: asyncio.Queue, shape: dict) -> dict:
    text, reason = [], None
    async for event in events(request, queue):
        text.append(event.text)
        reason = event.finish_reason
    if reason == "error":
        raise ApiError(500, "generation failed: " + "".join(text[-1:]), kind="server_error")
    ident, created = _ident(shape["chat"]), int(time.time())
    content = "".join(text)
    choice = {"index": 0, "finish_reason": reason, "logprobs": None}
    if shape["chat"]:
        choice["message"] = {"role": "assistant", "content": content}
        kind = "chat.completion"
    else:
        choice["text"] = content
        kind = "text_completion"
    return {"id": ident, "object": kind, "created": created, "model": service.name, "choices": [choice],
            "usage": usage(request)}


async def stream(service: Service, request: Request, queue: asyncio.Queue, shape: dict) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, `[DONE]` last."""
    chat = shape["chat"]
    ident, created = _ident(chat), int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str | None, reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {} if piece is None else {"content": piece}
            if first:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": reason, "logprobs": None}
        body = {"id": ident, "object": kind, "created": created, "model": service.name, "choices": [choice]}
        if shape["include_usage"]:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    if chat:
        yield chunk(None, None, first=True)
    async for event in events(request, queue):
        if event.finish_reason == "error":
            error = ApiError(500, "generation failed: " + event.text, kind="server_error")
            log_error(error)
            yield f"data: {json.dumps(error.body())}\n\n"
            return
        if event.text:
            yield chunk(event.text, None)
        if event.finish_reason is not None:
            yield chunk(None if chat else "", event.finish_reason)
    if shape["include_usage"]:
        body = {"id": ident, "object": kind, "created": created, "model": service.name, "choices": [],
                "usage": usage(request)}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


def _ident(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def _integer(body: dict, field: str, default: int | None) -> int | None:
    value = body.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{field}' must be an integer", field)
    return value


def _number(body: dict, field: str, default: float, low: float, high: float) -> float:
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"'{field}' must be a number", field)
    if not low <= value <= high:
        raise ApiError(400, f"'{field}' must be between {low:g} and {high:g}, got {value}", field)
    return float(value)


def _text_prompt(prompt: Any) -> str | list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids (one prompt per request)",
                   "prompt")


@dataclasses.dataclass
class ChatPrompt:
    """A conversation rendered as text, and the media its placeholders stand for, in order."""

    text: str
    images: list[bytes] = dataclasses.field(default_factory=list)
    audio: list[bytes] = dataclasses.field(default_factory=list)


def _chat_prompt(service: Service, messages: Any) -> ChatPrompt:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    prompt = ChatPrompt("")
    flat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role'", "messages")
        role = "user" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        if isinstance(content, list):
            content = _content(service, i, role, content, prompt)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of content parts", "messages")
        flat.append({"role": role, "content": content})
    if service.model.tokenizer is None:
        raise ApiError(400, "this artifact has no tokenizer: use /v1/completions with token ids", "messages")
    try:
        prompt.text = service.model.chat_prompt(flat)
    except RuntimeInputError as e:
        raise ApiError(400, str(e), "messages") from None
    return prompt


def _content(service: Service, i: int, role: str, parts: list, prompt: ChatPrompt) -> str:
    """A message's content parts as text: text parts joined by newlines, each media part the
    model's placeholder (written against its neighbours, as Gemma's chat templates do), its bytes
    appended to the prompt's images or audio."""
    pieces: list[tuple[bool, str]] = []  # (is text, text)
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in MEDIA_PARTS:
            modality = _modality(service, i, role, kind)
            data = _image_bytes(i, part.get("image_url")) if modality == "image" else _audio_bytes(i, part.get(kind))
            (prompt.images if modality == "image" else prompt.audio).append(data)
            pieces.append((False, _placeholder(service, modality)))
        elif kind == "text" and isinstance(part.get("text"), str):
            pieces.append((True, part["text"]))
        else:
            taken = "".join(f" or {k} parts" for k, m in TAKEN_PARTS.items() if m in input_modalities(service))
            raise ApiError(400, f"messages[{i}] content parts must be {{'type': 'text', 'text': ...}}{taken}",
                           "messages")
    text = ""
    for k, (is_text, piece) in enumerate(pieces):
        text += ("\n" if k and is_text and pieces[k - 1][0] else "") + piece
    return text


def _modality(service: Service, i: int, role: str, kind: str) -> str:
    """The modality of a media part this artifact takes (ApiError otherwise)."""
    taken = input_modalities(service)
    if len(taken) == 1:
        raise ApiError(400, f"messages[{i}] has a {kind} part; this artifact is a text-only model", "messages",
                       "unsupported_content")
    modality = TAKEN_PARTS.get(kind)
    if modality is None:
        raise ApiError(400, f"messages[{i}] has a {kind} part; this server takes "
                       + " and ".join(k for k, m in TAKEN_PARTS.items() if m in taken) + " parts", "messages",
                       "unsupported_content")
    if modality not in taken:
        raise ApiError(400, f"messages[{i}] has a {kind} part; this artifact takes no {modality} (its model "
                       f"takes {', '.join(taken)})", "messages", "unsupported_content")
    if role != "user":
        raise ApiError(400, f"messages[{i}] has a {kind} part; only user messages take images and audio",
                       "messages", "unsupported_content")
    return modality


def _placeholder(service: Service, modality: str) -> str:
    try:
        return media_placeholder(service.model.manifest, service.model.tokenizer, modality)
    except RuntimeInputError as e:
        raise ApiError(400, str(e), "messages") from None


def _image_bytes(i: int, image_url: Any) -> bytes:
    """The image of an image_url part, which must be a base64 data: URL."""
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        raise ApiError(400, f"messages[{i}]: an image_url part is {{'type': 'image_url', 'image_url': "
                       "{'url': 'data:image/png;base64,...'}}", "messages")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise ApiError(400, f"messages[{i}]: this server fetches no URLs; send the image inline as a data: URL "
                       "(data:image/png;base64,...)", "messages", "invalid_image_url")
    if scheme != "data":
        raise ApiError(400, f"messages[{i}]: the image url must be a data: URL (data:image/png;base64,...); "
                       "this server reads no files", "messages", "invalid_image_url")
    header, _, data = url[len("data:"):].partition(",")
    fields = header.lower().split(";")
    if not fields[0].startswith("image/") or "base64" not in fields[1:]:
        raise ApiError(400, f"messages[{i}]: the image url must be data:image/<type>;base64,<data>, not "
                       f"data:{header[:40]}", "messages", "invalid_image_url")
    if fields[0][len("image/"):] not in IMAGE_TYPES:
        raise ApiError(400, f"messages[{i}]: unsupported image type {fields[0]} (this server takes "
                       f"{', '.join(IMAGE_TYPES)})", "messages", "invalid_image_format")
    return _base64(i, data, "image")


def _audio_bytes(i: int, audio: Any) -> bytes:
    """The clip of an input_audio part: {"data": base64, "format": "wav"}."""
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise ApiError(400, f"messages[{i}]: an input_audio part is {{'type': 'input_audio', 'input_audio': "
                       "{'data': <base64>, 'format': 'wav'}}", "messages")
    if audio.get("format") not in AUDIO_FORMATS:
        raise ApiError(400, f"messages[{i}]: unsupported audio format {audio.get('format')!r} (this server takes "
                       f"{', '.join(AUDIO_FORMATS)})", "messages", "invalid_audio_format")
    return _base64(i, audio["data"], "audio")


def _base64(i: int, data: str, what: str) -> bytes:
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"messages[{i}]: the {what} data is not valid base64", "messages",
                       "invalid_base64") from None
    if not decoded:
        raise ApiError(400, f"messages[{i}]: empty {what} data", "messages")
    return decoded


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


async def completion_response(service: Service, http: HttpRequest, chat: bool):
    try:
        body = await _json_body(http)
        # parsing, tokenization and any media's decoding and encoding: off the event loop
        request, shape = await asyncio.to_thread(completion_request, service, body, chat)
        queue = submit(service, request)
        if shape["stream"]:
            return StreamingResponse(stream(service, request, queue, shape), media_type="text/event-stream",
                                     headers={**_headers(service), "cache-control": "no-cache"})
        return JSONResponse(await complete(service, request, queue, shape), headers=_headers(service))
    except ApiError as e:
        return error_response(service, e)


def models_response(service: Service) -> JSONResponse:
    return JSONResponse(models(service), headers=_headers(service))


def health_response(service: Service) -> JSONResponse:
    return JSONResponse(health(service), headers=_headers(service))


def metrics_response(service: Service) -> PlainTextResponse:
    return PlainTextResponse(metrics(service), headers=_headers(service))


def create_app(service: Service) -> FastAPI:
    """The standalone FastAPI app over one Service."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="gemma-export", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        return await completion_response(service, http, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        return await completion_response(service, http, chat=True)

    @app.get("/v1/models")
    async def list_models():
        return models_response(service)

    @app.get("/health")
    async def get_health():
        return health_response(service)

    @app.get("/metrics")
    async def get_metrics():
        return metrics_response(service)

    @app.exception_handler(404)
    async def not_found(http: HttpRequest, exc):
        return error_response(service, ApiError(404, f"no route {http.method} {http.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def not_allowed(http: HttpRequest, exc):
        return error_response(service, ApiError(405, f"{http.method} is not allowed on {http.url.path}",
                                                code="method_not_allowed"))

    return app


async def _json_body(http) -> Any:
    raw = await http.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None


def serve(artifact: Path | str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_queue: int | None = None, threads: int | None = None, log_level: str = "warning") -> None:
    import uvicorn

    configure_logging(log_level)
    service = Service(artifact, max_batch=max_batch, max_queue=max_queue, threads=threads)
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
