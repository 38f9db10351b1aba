"""What a request must pass before its body is parsed: the API key and the body's size (Guard, the
server's middleware; BodyTooLarge as the bytes arrive) and how deep its arrays and objects nest (a route class
that scans the raw bytes in linear time; a body nested deeper than MAX_JSON_DEPTH is refused before
Python's recursive JSON parser sees it)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Callable

import numpy as np
from fastapi import Request as HttpRequest
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from gemma_runtime.api_errors import ApiError

OPEN_PATHS = ("/health",)  # answered without the API key
MAX_JSON_DEPTH = 64  # arrays and objects in a body; OpenAI's bodies nest a handful of levels


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server's limit of {limit} bytes "
                              "(serve --max-body-mib)")


_KEPT = b'"[]{}'  # what json_depth looks at
_NOT_KEPT = bytes(b for b in range(256) if b not in _KEPT)
_STEPS = np.zeros(256, np.int8)
_STEPS[list(b"[{")], _STEPS[list(b"]}")] = 1, -1


def json_depth(body: bytes) -> int:
    """How deep a JSON text's arrays and objects nest, read from its bytes in linear time without
    parsing them: escaped backslashes, then escaped quotes dropped (in JSON a backslash appears
    only in strings), every quote left opens or closes a string, and the brackets outside strings
    count up and down. Of a text that is not JSON a number that means nothing (its parser refuses
    it)."""
    kept = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_KEPT)
    marks = np.frombuffer(kept, np.uint8)
    outside = (np.cumsum(marks == ord('"'), dtype=np.int32) & 1) == 0  # a closing quote counts as outside
    return int(np.cumsum(np.where(outside, _STEPS[marks], 0), dtype=np.int32).max(initial=0))


class BodyTooDeep(HTTPException):
    code = "nested_too_deep"

    def __init__(self, depth: int):
        super().__init__(400, f"the request body nests arrays and objects {depth} levels deep; this server takes "
                              f"at most {MAX_JSON_DEPTH}")


class DepthCheckedRoute(APIRoute):
    """A route that refuses a body nested deeper than MAX_JSON_DEPTH (BodyTooDeep) before FastAPI
    parses it. Set as an app's router.route_class before its routes are declared."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def checked(request: HttpRequest) -> Response:
            body = await request.body()  # kept on the request: FastAPI's handler reads it from there
            depth = json_depth(body) if len(body) < 2**20 else await asyncio.to_thread(json_depth, body)
            if depth > MAX_JSON_DEPTH:
                raise BodyTooDeep(depth)
            return await handle(request)

        return checked


class Guard:
    """ASGI middleware: the API key (Bearer; every route but OPEN_PATHS) and the body size limit,
    checked on the declared content-length and again on the bytes as they arrive (a chunked body
    declares none)."""

    def __init__(self, app, respond: Callable[[ApiError], Response], api_key: str | None, max_body_bytes: int):
        """respond: the server's error response for a refusal."""
        self.app, self.respond, self.api_key, self.max_body_bytes = app, respond, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                error = ApiError(401, "a valid API key is required (Authorization: Bearer <key>)", None,
                                 "invalid_api_key", "authentication_error")
                return await self.respond(error)(scope, receive, send)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            error = ApiError(413, str(BodyTooLarge(self.max_body_bytes).detail), code="request_too_large")
            return await self.respond(error)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)  # FastAPI re-raises it from its body parsing
            return message

        await self.app(scope, limited, send)
