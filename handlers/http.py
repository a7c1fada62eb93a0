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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core import metrics
from core.config import Settings, from_env
from core.errors import BadRequest, ConfigError, ContextOverflow, ModelUnavailable, StratoError
from core.openai import responses, responses_api, responses_events, schemas, tokenize, tools
from core.openai.tool_output import OutputParser, collect, prompt_opens_think
from core.serving import Engine, GenerationRequest, ModelService, TokenEvent, TokenLogprob
from handlers.asgi import (
    ClientGone,
    EventStream,
    Gate,
    JSONResponse,
    error_response,
    read_json,
    unless_disconnected,
)
from handlers.drain import Drain, on_sigterm
from tiers.errors import StorageError

log = logging.getLogger("strato.http")


@dataclass(frozen=True)
class Completed:
    """What one generation cost; the Lambda handler turns it into EMF metrics."""

    kind: str            # "chat", "text" or "responses"
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
        self.responses = responses_api.ResponseStore()

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
        prompt, spec, forced = _chat_prompt(engine, body.messages, body.tools)

        def parser() -> OutputParser:  # one per answer: each of the n is split alone
            return OutputParser(spec.names() if spec else None,
                                in_think=prompt_opens_think(prompt),
                                prefix=forced.prefix if forced else "")

        return await self._generate(request, "chat", engine,
                                    prompt + (forced.prefix if forced else ""),
                                    body.decoding, arrived, echo="", parser=parser,
                                    tool_grammar=tools.turn_grammar(
                                        spec, forced, _answer_schema(body.decoding)))

    async def completions(self, request: Request) -> Response:
        arrived = time.perf_counter()
        body = schemas.parse_completion(await read_json(request, self.settings.max_body),
                                        max_tokens_limit=self.settings.max_tokens_limit)
        engine = await unless_disconnected(request, self.service.engine(body.model))
        echo = "" if not body.echo else body.prompt if body.tokens is None \
            else _prompt_text(engine, body.tokens)
        return await self._generate(request, "text", engine, body.prompt, body.decoding,
                                    arrived, echo=echo, prompt_tokens=body.tokens)

    async def embeddings(self, request: Request) -> Response:
        body = schemas.parse_embeddings(await read_json(request, self.settings.max_body))
        engine = await unless_disconnected(request, self.service.engine(body.model))
        vectors, tokens = await unless_disconnected(request, engine.embed(body.inputs))
        return JSONResponse(responses.embeddings(
            model=engine.info.name, vectors=vectors, prompt_tokens=tokens,
            encoding_format=body.encoding_format))

    async def tokenize(self, request: Request) -> Response:
        body = tokenize.parse_tokenize(await read_json(request, self.settings.max_body))
        engine = await unless_disconnected(request, self.service.engine(body.model))
        ids = engine.tokenize(body.content, add_bos=body.add_special)
        pieces = [engine.detokenize([t]) for t in ids] if body.with_pieces else None
        return JSONResponse(tokenize.tokens_body(ids, pieces))

    async def detokenize(self, request: Request) -> Response:
        body = tokenize.parse_detokenize(await read_json(request, self.settings.max_body))
        engine = await unless_disconnected(request, self.service.engine(body.model))
        return JSONResponse({"content": engine.detokenize(body.tokens)})

    async def create_response(self, request: Request) -> Response:
        """POST /v1/responses: the chat path, in the Responses API's objects and events."""
        arrived = time.perf_counter()
        body = responses_api.parse(await read_json(request, self.settings.max_body),
                                   max_tokens_limit=self.settings.max_tokens_limit)
        history = self.responses.history(body.previous_response_id)
        engine = await unless_disconnected(request, self.service.engine(body.model))
        prompt, spec, forced = _chat_prompt(engine, body.messages(history), body.tools)
        prefix = forced.prefix if forced else ""
        gen, first = await self._start(
            request, "chat", engine, prompt + prefix, body.decoding,
            tools.turn_grammar(spec, forced, _answer_schema(body.decoding)))
        ttft = time.perf_counter() - arrived
        draft = responses_api.Draft(body, engine.info.name)
        parser = OutputParser(spec.names(), prefix=prefix, reasoning=False) if spec else None
        writer = responses_events.EventWriter(draft, parser, encode=body.decoding.stream)
        events = self._response_events(writer, gen, first, history, ttft)
        if body.decoding.stream:
            return EventStream(events, headers={"Cache-Control": "no-cache",
                                                "X-Accel-Buffering": "no"})

        async def drain() -> None:  # the same writer, silent: the same output items
            async for _ in events:
                pass

        try:
            await unless_disconnected(request, drain())
        finally:
            await events.aclose()
            await gen.aclose()
        return JSONResponse(writer.final)

    async def get_response(self, request: Request) -> Response:
        return JSONResponse(self.responses.get(request.path_params["id"]))

    async def delete_response(self, request: Request) -> Response:
        rid = request.path_params["id"]
        self.responses.delete(rid)
        return JSONResponse({"id": rid, "object": "response.deleted", "deleted": True})

    async def _start(self, request: Request, kind: str, engine: Engine, prompt: str,
                     decoding: schemas.Decoding, tool_grammar: str | None = None,
                     prompt_tokens: tuple[int, ...] | None = None
                     ) -> tuple[AsyncGenerator[TokenEvent, None], TokenEvent]:
        """Submit one generation and wait for its first event; a tool turn's grammar
        (core.openai.tools.turn_grammar) takes the place of response_format's.

        Admission (queue full, context overflow) happens before the first event:
        waiting for it here turns those into real HTTP statuses, not a broken 200.
        """
        gen = engine.generate(GenerationRequest(
            prompt=prompt, max_tokens=self._max_tokens(engine, prompt, decoding),
            sampling=decoding.sampling, stop=decoding.stop,
            grammar=tool_grammar or _grammar(decoding), n=decoding.n,
            logprobs=decoding.logprobs, prompt_logprobs=decoding.prompt_logprobs,
            prompt_tokens=prompt_tokens))
        try:
            first = await unless_disconnected(request, gen.__anext__())
        except BaseException as exc:
            await gen.aclose()
            if isinstance(exc, ContextOverflow) and kind == "text":
                exc.param = "prompt"  # the engine cannot know which field held the text
            raise
        return gen, first

    async def _generate(self, request: Request, kind: str, engine: Engine, prompt: str,
                        decoding: schemas.Decoding, arrived: float, echo: str,
                        parser: Callable[[], OutputParser] | None = None,
                        tool_grammar: str | None = None,
                        prompt_tokens: tuple[int, ...] | None = None) -> Response:
        """`parser` makes the splitter of a chat answer (content, reasoning, tool calls)."""
        gen, first = await self._start(request, kind, engine, prompt, decoding, tool_grammar,
                                       prompt_tokens)
        created = int(time.time())
        rid = responses.new_id("chatcmpl" if kind == "chat" else "cmpl")
        model = engine.info.name
        ttft = time.perf_counter() - arrived
        if decoding.stream:
            writer = responses.ChunkWriter(kind, rid, created, model)
            parsers = [parser() for _ in range(decoding.n)] if parser else None
            return EventStream(self._sse(writer, gen, first, decoding, ttft, echo, parsers),
                               headers={"Cache-Control": "no-cache",
                                        "X-Accel-Buffering": "no"})
        try:
            answers = await unless_disconnected(request, _collect(gen, first, decoding.n))
        finally:
            await gen.aclose()
        choices = answers.choices(echo, decoding.logprobs is not None, parser)
        self._observe(kind, model, ttft, responses.total_usage(choices))
        build = responses.chat_completion if kind == "chat" else responses.text_completion
        return JSONResponse(build(id=rid, created=created, model=model, choices=choices))

    async def _sse(self, writer: responses.ChunkWriter, gen: AsyncGenerator[TokenEvent, None],
                   event: TokenEvent, decoding: schemas.Decoding, ttft: float,
                   echo: str, parsers: list[OutputParser] | None) -> AsyncIterator[bytes]:
        """SSE bytes for one stream of n answers; the finally closes the engine's
        generator. Each answer's chunks carry its index; its finish chunk comes when it
        ends, the usage chunk (all answers) and [DONE] after the last one. A chat
        answer's text goes through its own parser (tool calls, reasoning); the logprobs
        of an event ride on its first content piece, or on an empty one."""
        wants_logprobs = decoding.logprobs is not None
        try:
            for index in range(decoding.n):
                if writer.kind == "chat":
                    yield writer.role(index)
                if echo:  # the prompt's logprobs come first, on their own event
                    yield writer.token(echo, index, event.prompt_logprobs
                                       if wants_logprobs else None)
            open_answers, generated = decoding.n, 0
            while True:
                logprobs = event.logprobs if wants_logprobs and event.logprobs else None
                if parsers is None:
                    if event.text or logprobs:
                        yield writer.token(event.text, event.index, logprobs)
                else:
                    parser = parsers[event.index]
                    pieces = parser.feed(event.text) if event.text else []
                    if event.finish_reason is not None:
                        pieces += parser.finish()
                    for piece in pieces:
                        carry = logprobs if piece.kind == "content" else None
                        logprobs = None if carry else logprobs
                        yield writer.delta(piece, event.index, carry)
                    if logprobs:
                        yield writer.token("", event.index, logprobs)
                if event.finish_reason is not None:
                    calls = parsers is not None and parsers[event.index].calls > 0
                    yield writer.finish(event, tool_calls=calls)
                    generated += event.completion_tokens
                    open_answers -= 1
                    if not open_answers:
                        break
                event = await gen.__anext__()
            if decoding.include_usage:
                yield writer.usage(event.prompt_tokens, generated)
            yield responses.DONE
            self._observe(writer.kind, writer.model, ttft,
                          responses.usage(event.prompt_tokens, generated))
        except StopAsyncIteration:
            log.error("engine stream ended without a finish event")
            yield responses.sse(responses.error_body(RuntimeError("stream ended early"))[1])
        except (StratoError, StorageError) as exc:
            # Headers are gone; OpenAI's clients raise on an SSE event carrying "error".
            yield responses.sse(responses.error_body(exc)[1])
        finally:
            await gen.aclose()

    async def _response_events(self, writer: responses_events.EventWriter,
                               gen: AsyncGenerator[TokenEvent, None], event: TokenEvent,
                               history: tuple[dict[str, Any], ...],
                               ttft: float) -> AsyncGenerator[bytes, None]:
        """One response through its writer: the Responses event stream (nothing but
        `writer.final` when the writer is silent, and errors raised, not sent). The
        finished response is stored before the last event goes out, so a client that
        reads `response.completed` can chain on it."""
        draft = writer.draft
        try:
            yield writer.opening()
            while True:
                chunk = writer.tokens(event)
                if chunk:
                    yield chunk
                if event.finish_reason is not None:
                    break
                event = await gen.__anext__()
            tail, final = writer.closing(event)
            self.responses.put(draft.request, final, history)
            yield tail
            self._observe("responses", draft.model, ttft,
                          responses.usage(event.prompt_tokens, event.completion_tokens))
        except StopAsyncIteration:
            log.error("engine stream ended without a finish event")
            if not writer.encode:
                raise RuntimeError("stream ended early") from None
            yield writer.error(responses.error_body(RuntimeError("stream ended early"))[1])
        except (StratoError, StorageError) as exc:
            if not writer.encode:
                raise
            yield writer.error(responses.error_body(exc)[1])
        finally:
            await gen.aclose()

    def _max_tokens(self, engine: Engine, prompt: str, decoding: schemas.Decoding) -> int:
        """The request's max_tokens, or "until the context is full" (chat's default):
        the engine ends a sequence with "length" when it reaches the context size."""
        if decoding.max_tokens is not None:
            return decoding.max_tokens
        return max(1, min(engine.info.n_ctx, self.settings.max_tokens_limit))

    def _observe(self, kind: str, model: str, ttft: float, used: dict[str, int]) -> None:
        if self.observer is not None:
            self.observer(Completed(kind, model, ttft, used["prompt_tokens"],
                                    used["completion_tokens"]))


@dataclass
class _Answers:
    """A request's n answers, read to the end: texts, final events, logprobs."""

    texts: list[list[str]]
    lasts: list[TokenEvent]
    logprobs: list[list[TokenLogprob]]
    prompt_logprobs: tuple[TokenLogprob, ...] = ()

    def choices(self, echo: str, with_logprobs: bool,
                parser: Callable[[], OutputParser] | None = None) -> list[responses.Choice]:
        """One Choice per answer; an echo puts the prompt (and its logprobs) first; a
        chat answer is split by its own parser."""
        head = list(self.prompt_logprobs) if echo else []
        out = []
        for i, last in enumerate(self.lasts):
            text = echo + "".join(self.texts[i])
            output = None
            if parser is not None:
                split = parser()
                output = collect(split.feed(text) + split.finish())
            out.append(responses.Choice(i, text, last,
                                        head + self.logprobs[i] if with_logprobs else None,
                                        output))
        return out


async def _collect(gen: AsyncIterator[TokenEvent], first: TokenEvent, n: int = 1) -> _Answers:
    answers = _Answers([[] for _ in range(n)], [first] * n, [[] for _ in range(n)])
    event, open_answers = first, n
    while True:
        answers.texts[event.index].append(event.text)
        answers.logprobs[event.index].extend(event.logprobs)
        if event.prompt_logprobs:
            answers.prompt_logprobs = event.prompt_logprobs
        if event.finish_reason is not None:
            answers.lasts[event.index] = event
            open_answers -= 1
            if not open_answers:
                return answers
        event = await gen.__anext__()


def _chat_prompt(engine: Engine, messages: Sequence[dict[str, Any]],
                 spec: tools.ToolSpec | None
                 ) -> tuple[str, tools.ToolSpec | None, tools.ForcedCall | None]:
    """A chat turn's prompt, its tools when they are active (None with `none` or no
    tools) and, when a call is forced, the call's prefix and grammar."""
    active = spec if spec is not None and spec.active else None
    prompt = engine.render_chat(messages, active.tools if active else ())
    return prompt, active, tools.forced_call(active)


def _prompt_text(engine: Engine, tokens: Sequence[int]) -> str:
    """A token-array prompt as the text `echo` shows: without the leading BOS, which
    the prompt's logprobs leave out too (it is what the first token is scored after)."""
    bos = engine.tokenize("", add_bos=True)
    return engine.detokenize(tokens[1:] if bos and list(tokens[:1]) == bos else tokens)


def _answer_schema(decoding: schemas.Decoding) -> dict[str, Any] | None:
    """response_format as the JSON schema of a text answer (None: free text)."""
    fmt = decoding.response_format
    if fmt is None:
        return None
    return dict(fmt.schema or {}) if fmt.type == "json_schema" and fmt.schema \
        else {"type": "object"}


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
        Route("/v1/responses", api.create_response, methods=["POST"]),
        Route("/v1/responses/{id}", api.get_response, methods=["GET"]),
        Route("/v1/responses/{id}", api.delete_response, methods=["DELETE"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
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
