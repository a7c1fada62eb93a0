"""The OpenAI-compatible HTTP API as a Starlette app.

`create_app(settings, service)` builds a value: tests, the CLI and the Lambda handler each
build their own. `uvicorn handlers.http:app` gets a module-level app that is built from
the environment on first access (PEP 562), so importing this module stays cheap.

Routes are thin: read the body (bounded), parse it with core.schemas, ask the service for
an engine, stream its TokenEvents through core.responses. Errors of every kind are typed
and rendered by one function (core.responses.error_body over core.errors.status_of).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics, responses, schemas
from core.config import Settings, from_env
from core.errors import BadRequest, ModelUnavailable, PayloadTooLarge, StratoError, Unauthorized
from core.generation import Engine, GenerationRequest, TokenEvent
from core.service import ModelService
from tiers.errors import StorageError

log = logging.getLogger("strato.http")
T = TypeVar("T")

OPEN_PATHS = frozenset({"/health", "/ready"})  # probes must work without the key


@dataclass(frozen=True)
class Completed:
    """What one generation cost; the Lambda handler turns it into EMF metrics."""

    route: str
    model: str
    ttft: float | None
    prompt_tokens: int
    completion_tokens: int


Observer = Callable[[Completed], None]
Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


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

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = f"Bearer {api_key}".encode() if api_key else None

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

        try:
            if self.key is not None and scope["path"] not in OPEN_PATHS \
                    and not self._authorized(scope):
                await error_response(Unauthorized("missing or invalid API key; send "
                                                  "'Authorization: Bearer <key>'"))(
                    scope, receive, counting_send)
                return
            await self.app(scope, receive, counting_send)
        finally:
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


class Api:
    """The routes, closed over one settings object and one model service."""

    def __init__(self, settings: Settings, service: ModelService,
                 observer: Observer | None = None) -> None:
        self.settings = settings
        self.service = service
        self.observer = observer

    # --- probes and admin ----------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if not self.service.ready():
            raise ModelUnavailable("the default model is not loaded yet", retry_after=1)
        return JSONResponse({"status": "ready"})

    async def metrics(self, request: Request) -> Response:
        return Response(metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(self, request: Request) -> Response:
        return JSONResponse(responses.model_list(self.service.models()))

    async def cache(self, request: Request) -> Response:
        return JSONResponse(self.service.cache_report())

    async def load(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        await self.service.prefetch(ref)
        return JSONResponse({"status": "loading", "model": ref}, status_code=202)

    # --- generation ------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        arrived = time.perf_counter()
        body = schemas.parse_chat(await read_json(request, self.settings.max_body),
                                  max_tokens_limit=self.settings.max_tokens_limit)
        engine = await unless_disconnected(request, self.service.engine(body.model))
        prompt = engine.render_chat(body.messages)
        return await self._generate(request, "chat", engine, prompt, body.decoding,
                                    arrived, echo="")

    async def completions(self, request: Request) -> Response:
        arrived = time.perf_counter()
        body = schemas.parse_completion(await read_json(request, self.settings.max_body),
                                        max_tokens_limit=self.settings.max_tokens_limit)
        engine = await unless_disconnected(request, self.service.engine(body.model))
        return await self._generate(request, "text", engine, body.prompt, body.decoding,
                                    arrived, echo=body.prompt if body.echo else "")

    async def embeddings(self, request: Request) -> Response:
        body = schemas.parse_embeddings(await read_json(request, self.settings.max_body))
        engine = await unless_disconnected(request, self.service.engine(body.model))
        vectors, tokens = await unless_disconnected(request, engine.embed(body.inputs))
        return JSONResponse(responses.embeddings(
            model=engine.info.name, vectors=vectors, prompt_tokens=tokens,
            encoding_format=body.encoding_format))

    async def _generate(self, request: Request, kind: str, engine: Engine, prompt: str,
                        decoding: schemas.Decoding, arrived: float, echo: str) -> Response:
        gen = engine.generate(GenerationRequest(
            prompt=prompt, max_tokens=self._max_tokens(engine, prompt, decoding),
            sampling=decoding.sampling, stop=decoding.stop, grammar=_grammar(decoding)))
        created = int(time.time())
        rid = responses.new_id("chatcmpl" if kind == "chat" else "cmpl")
        model = engine.info.name
        try:
            # Admission (queue full, context overflow) happens before the first event:
            # waiting for it here turns those into real HTTP statuses, not a broken 200.
            first = await unless_disconnected(request, gen.__anext__())
        except BaseException:
            await gen.aclose()
            raise
        ttft = time.perf_counter() - arrived
        if decoding.stream:
            writer = responses.ChunkWriter(kind, rid, created, model)
            return EventStream(self._sse(writer, gen, first, decoding, ttft, echo),
                               headers={"Cache-Control": "no-cache",
                                        "X-Accel-Buffering": "no"})
        try:
            text, last = await unless_disconnected(request, _collect(gen, first))
        finally:
            await gen.aclose()
        self._observe(kind, model, ttft, last)
        build = responses.chat_completion if kind == "chat" else responses.text_completion
        return JSONResponse(build(id=rid, created=created, model=model, text=echo + text,
                                  last=last))

    async def _sse(self, writer: responses.ChunkWriter, gen: AsyncIterator[TokenEvent],
                   event: TokenEvent, decoding: schemas.Decoding, ttft: float,
                   echo: str) -> AsyncIterator[bytes]:
        """SSE bytes for one stream; the finally closes the engine's generator."""
        try:
            if writer.kind == "chat":
                yield writer.role()
            if echo:
                yield writer.token(echo)
            while True:
                if event.text:
                    yield writer.token(event.text)
                if event.finish_reason is not None:
                    break
                event = await gen.__anext__()
            yield writer.finish(event)
            if decoding.include_usage:
                yield writer.usage(event)
            yield responses.DONE
            self._observe(writer.kind, writer.model, ttft, event)
        except StopAsyncIteration:
            log.error("engine stream ended without a finish event")
            yield responses.sse(responses.error_body(RuntimeError("stream ended early"))[1])
        except (StratoError, StorageError) as exc:
            # Headers are gone; OpenAI's clients raise on an SSE event carrying "error".
            yield responses.sse(responses.error_body(exc)[1])
        finally:
            await gen.aclose()  # type: ignore[attr-defined]

    def _max_tokens(self, engine: Engine, prompt: str, decoding: schemas.Decoding) -> int:
        """The request's max_tokens, or "until the context is full" (chat's default):
        the engine ends a sequence with "length" when it reaches the context size."""
        if decoding.max_tokens is not None:
            return decoding.max_tokens
        return max(1, min(engine.info.n_ctx, self.settings.max_tokens_limit))

    def _observe(self, kind: str, model: str, ttft: float, last: TokenEvent) -> None:
        if self.observer is not None:
            self.observer(Completed(kind, model, ttft, last.prompt_tokens,
                                    last.completion_tokens))


async def _collect(gen: AsyncIterator[TokenEvent], first: TokenEvent
                   ) -> tuple[str, TokenEvent]:
    parts, event = [first.text], first
    while event.finish_reason is None:
        event = await gen.__anext__()
        parts.append(event.text)
    return "".join(parts), event


def _grammar(decoding: schemas.Decoding) -> str | None:
    """GBNF for response_format; core.grammar owns the JSON-schema translation."""
    fmt = decoding.response_format
    if fmt is None:
        return None
    from core import grammar

    if fmt.type == "json_object":
        return grammar.from_response_format({"type": "json_object"})
    return grammar.from_response_format({"type": "json_schema",
                                         "json_schema": {"schema": dict(fmt.schema or {})}})


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientGone):
        return Response(status_code=499)
    if isinstance(exc, HTTPException):  # unknown route, wrong method
        kind = BadRequest if exc.status_code < 500 else StratoError
        err = kind(exc.detail or "error")
        err.status = exc.status_code
        if exc.status_code == 404:
            err.code = "not_found"
        elif exc.status_code == 405:
            err.code = "method_not_allowed"
        return error_response(err)
    if not isinstance(exc, (StratoError, StorageError)):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(exc)


def create_app(settings: Settings, service: ModelService, *,
               observer: Observer | None = None, lifespan: Lifespan | None = None
               ) -> Starlette:
    """The ASGI app for one settings object and one model service.

    The app owns no model: the service does, and whoever built the service decides when
    to load and close it (`lifespan`, see `serve_app`; Lambda loads at import instead).
    """
    api = Api(settings, service, observer)
    routes = [
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{ref:path}/load", api.load, methods=["POST"]),
        Route("/v1/cache", api.cache, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/ready", api.ready, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[..., Any]] = {
        StratoError: _on_error, StorageError: _on_error, ClientGone: _on_error,
        HTTPException: _on_error, Exception: _on_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.add_middleware(Gate, api_key=settings.api_key)
    app.state.settings = settings
    app.state.service = service
    return app


def build_service(settings: Settings) -> ModelService:
    """The production ModelService (core.models), imported late to keep imports cheap."""
    from core.models import ModelManager

    return ModelManager(settings)


def serve_app(settings: Settings, service: ModelService) -> Starlette:
    """create_app plus a lifespan for a long-running server (uvicorn).

    Start-up only *starts* loading the default model, so /health answers at once and
    /ready flips when the model is in; shutdown closes the service and its engines.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("strato settings: %s", settings.public())
        if service.default_model is not None:
            await service.prefetch(service.default_model)
        try:
            yield
        finally:
            await service.close()

    return create_app(settings, service, lifespan=lifespan)


_app: Starlette | None = None


def __getattr__(name: str) -> Any:
    """`handlers.http:app` for uvicorn: built from STRATO_* on first access."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        settings = from_env()
        _app = serve_app(settings, build_service(settings))
    return _app
