"""OpenAI's error shape for what FastAPI refuses before a handler runs: a body that fails its
pydantic model (validation_error: a 400 naming the field), an unknown route (404), a method not
allowed (405), a body that does not parse (400) and one too large (413)."""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gemma_runtime import api_models as api
from gemma_runtime.api_errors import ApiError


def validation_error(exc: RequestValidationError) -> ApiError:
    """A body that fails its model, as OpenAI's 400: the most specific of pydantic's errors (the
    deepest), its field's path in the message and its top-level field as the param."""
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    if error["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({error.get('ctx', {}).get('error', '')})")
    # the path without FastAPI's "body" and pydantic's union members and tags ("str", "list[...]", "text")
    loc = [p for p in error["loc"][1:] if isinstance(p, int) or p.isidentifier() and p not in api.TAKEN_PART_TYPES
           + ("str", "int", "other")]
    if not loc:
        return ApiError(400, "the request body must be a JSON object" if error["type"] == "model_attributes_type"
                        else f"the request body: {error['msg']}")
    path = str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    message = error["msg"].removeprefix("Value error, ")
    return ApiError(400, f"'{path}': {message}", str(loc[0]))


def install(app: FastAPI, respond: Callable[[ApiError], JSONResponse]) -> None:
    """The app's handlers of those errors; respond writes (and logs) the answer."""

    @app.exception_handler(RequestValidationError)
    async def invalid(http: HttpRequest, exc: RequestValidationError):
        return respond(validation_error(exc))

    @app.exception_handler(404)
    async def not_found(http: HttpRequest, exc):
        return respond(ApiError(404, f"no route {http.method} {http.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def not_allowed(http: HttpRequest, exc):
        return respond(ApiError(405, f"{http.method} is not allowed on {http.url.path}", code="method_not_allowed"))

    @app.exception_handler(400)
    async def unparsed(http: HttpRequest, exc):  # FastAPI's own "error parsing the body", BodyTooDeep
        code = getattr(exc, "code", None)
        message = str(exc.detail) if code else f"the request body could not be parsed ({exc.detail})"
        return respond(ApiError(400, message, code=code))

    @app.exception_handler(413)
    async def too_large(http: HttpRequest, exc):
        return respond(ApiError(413, str(exc.detail), code="request_too_large"))
