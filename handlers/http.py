"""The OpenAI-compatible HTTP API as a Starlette app.

`create_app(settings, service)` builds a value: tests, the CLI and the Lambda handler each
build their own. `uvicorn handlers.http:app` gets a module-level app that is built from
the environment on first access (PEP 562), so importing this module stays cheap.

Routes are thin: read the body (bounded), parse it with core.openai.schemas, ask the service for
an engine, stream its TokenEvents through core.openai.responses. Errors of every kind are typed
and rendered by one function (core.openai.responses.error_body over core.errors.status_of).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core import metrics
from core.openai import responses, schemas
from core.config import Settings, from_env
from core.errors import (BadRequest, ConfigError, ContextOverflow, ModelUnavailable,
                         StratoError)
from core.serving import Engine, GenerationRequest, TokenEvent
from core.serving import ModelService
from handlers.asgi import (ClientGone, EventStream, Gate, JSONResponse, error_response,
                           read_json, unless_disconnected)
from handlers.drain import Drain, on_sigterm
from tiers.errors import StorageError

log = logging.getLogger("strato.http")


@dataclass(frozen=True)
class Completed:
    """What one generation cost; the Lambda handler turns it into EMF metrics."""

    kind: str            # "chat" or "text"
    model: str
    ttft: float | None
    prompt_tokens: int
    completion_tokens: int


Observer = Callable[[Completed], None]
Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


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
        except BaseException as exc:
            await gen.aclose()
            if isinstance(exc, ContextOverflow) and kind == "text":
                exc.param = "prompt"  # the engine cannot know which field held the text
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
    """GBNF for response_format; core.openai.grammar owns the JSON-schema translation."""
    fmt = decoding.response_format
    if fmt is None:
        return None
    from core.openai import grammar

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
    app.state.drain = Drain()
    app.add_middleware(Gate, api_key=settings.api_key, drain=app.state.drain)
    app.state.settings = settings
    app.state.service = service
    return app


def build_service(settings: Settings) -> ModelService:
    """The production ModelService (core.serving.manager), imported late to keep imports cheap."""
    from core.serving import ModelManager

    return ModelManager(settings)


def serve_app(settings: Settings, service: ModelService) -> Starlette:
    """create_app plus a lifespan for a long-running server (uvicorn).

    Start-up only *starts* loading the default model, so /health answers at once and
    /ready flips when the model is in; SIGTERM drains (handlers.drain); shutdown closes
    the service (engines, tier copies, policy history).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("strato settings: %s", settings.public())
        if service.default_model is not None:
            await service.prefetch(service.default_model)
        uninstall = on_sigterm(app.state.drain, settings.shutdown_grace)
        try:
            yield
        finally:
            uninstall()
            await service.close()

    return create_app(settings, service, lifespan=lifespan)


_app: Starlette | None = None


def __getattr__(name: str) -> Any:
    """`handlers.http:app` for uvicorn: built from STRATO_* on first access."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        try:
            settings = from_env()
            _app = serve_app(settings, build_service(settings))
        except ConfigError as exc:   # one line, not uvicorn's import traceback
            print(f"strato: configuration: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return _app
