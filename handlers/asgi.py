"""ASGI plumbing under the routes: bounded bodies, disconnects, the key and the count.

Kept apart from handlers/http.py so the routes read as parse -> engine -> render. Each
piece exists because Starlette's default does something we cannot accept for an LLM
server: unbounded body reads, disconnects noticed only on the next send (a queued
request would keep its place), and per-route bookkeeping that 401s and 404s would skip.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Awaitable, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics
from core.errors import ModelUnavailable, PayloadTooLarge, Unauthorized
from core.openai import responses, schemas
from handlers.drain import Drain

T = TypeVar("T")

OPEN_PATHS = frozenset({"/health", "/ready"})  # probes must work without the key


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = responses.error_body(exc)
    return JSONResponse(body, status_code=status, headers=headers)


class EventStream(StreamingResponse):
    """SSE that stops generating the moment the client goes, in every ASGI server.

    Starlette only watches for disconnects on ASGI < 2.4 and otherwise notices on the
    next failed send; a queued or slow request would keep its sequence until then. Here
    a watcher task cancels the stream on `http.disconnect`, and the body generator is
    always closed so the engine frees the sequence in the same step.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self.stream_response(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
        if sender.done() and not sender.cancelled() and isinstance(sender.exception(),
                                                                    Exception):
            if not isinstance(sender.exception(), OSError):  # OSError: client gone
                raise sender.exception()  # type: ignore[misc]


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing more than `limit` bytes (413).

    Content-Length is checked first so an honest oversized upload is refused without
    reading it; the streamed count covers chunked bodies and lying headers.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return schemas.load_json(b"".join(chunks))


class Gate:
    """Outermost middleware: counts every request by route and status, checks the key.

    Counting here (not in each route) also covers 401, 404 and 413 answers. The route
    label is the matched route's template, never the raw path, so labels stay bounded.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, drain: Drain | None = None
                 ) -> None:
        self.app = app
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.drain = drain or Drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.drain.enter()
        try:
            if self.drain.draining and scope["path"] != "/health":
                # Shutting down (handlers.drain): in-flight requests finish, new ones go
                # elsewhere. /health stays 200: draining is not dead.
                await error_response(ModelUnavailable(
                    "this instance is shutting down; retry on another", retry_after=2,
                    code="shutting_down"))(scope, receive, counting_send)
                return
            if self.key is not None and scope["path"] not in OPEN_PATHS \
                    and not self._authorized(scope):
                await error_response(Unauthorized("missing or invalid API key; send "
                                                  "'Authorization: Bearer <key>'"))(
                    scope, receive, counting_send)
                return
            await self.app(scope, receive, counting_send)
        finally:
            self.drain.leave()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            metrics.requests_total.labels(route=label, status=str(status)).inc()

    def _authorized(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        return hmac.compare_digest(given, self.key or b"")
