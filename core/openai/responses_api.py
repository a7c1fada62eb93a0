"""OpenAI's Responses API (`/v1/responses`): its request, its objects and its events.

A Responses request is a chat request in other words: `input` (a string or a list of
message items) plus `instructions` becomes chat messages, which run through the same
template, engine and sampler as `/v1/chat/completions`. What is specific lives here:

- `parse` turns a CreateResponse body into a `ResponsesRequest` (pure, 400s with `param`);
- `response_object` renders the Response object (create, `response.completed`, GET);
- `EventWriter` renders the streamed event sequence, numbered by `sequence_number`:
  response.created, response.in_progress, response.output_item.added,
  response.content_part.added, response.output_text.delta ..., response.output_text.done,
  response.content_part.done, response.output_item.done, then response.completed (or
  response.incomplete when `max_output_tokens` cut the answer, as OpenAI does);
- `ResponseStore` keeps finished responses for GET and `previous_response_id`.

The store is in memory, bounded and per instance: a response is found only by the
instance (the process, the Lambda execution environment) that produced it, and the
oldest ones are forgotten first. As in OpenAI's API, `instructions` are not carried over
by `previous_response_id`; the earlier turns' input and output are.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.engine.protocol import TokenEvent, TokenLogprob
from core.errors import BadRequest, NotFound
from core.openai import responses, schemas

STORE_SIZE = 512  # responses kept per instance for GET and previous_response_id
LOGPROBS = "message.output_text.logprobs"  # the `include` value that asks for them
INPUT_ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated CreateResponse body.

    `input` is this request's own turn as chat messages; `previous_response_id` names
    the stored turns that go before it.
    """

    model: str | None
    input: tuple[dict[str, Any], ...]
    instructions: str | None
    decoding: schemas.Decoding
    previous_response_id: str | None = None
    store: bool = True
    metadata: Mapping[str, str] = field(default_factory=dict)
    text_format: Mapping[str, Any] = field(default_factory=lambda: {"type": "text"})

    def messages(self, history: tuple[dict[str, Any], ...] = ()) -> tuple[dict[str, Any], ...]:
        """The chat messages to render: instructions, earlier turns, this input."""
        system = ({"role": "system", "content": self.instructions},) if self.instructions \
            else ()
        return system + history + self.input


# --- the request -----------------------------------------------------------------------


def parse(body: Mapping[str, Any], *, max_tokens_limit: int) -> ResponsesRequest:
    """Validate a /v1/responses body."""
    if "input" not in body:
        raise BadRequest("'input' is required", param="input")
    for name in ("tools", "conversation", "prompt"):
        if body.get(name):
            raise BadRequest(f"'{name}' is not supported on /v1/responses", param=name)
    if body.get("background"):
        raise BadRequest("background responses are not supported", param="background")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("'instructions' must be a string", param="instructions")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise BadRequest("'previous_response_id' must be a string",
                         param="previous_response_id")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise BadRequest("'metadata' must be an object of strings", param="metadata")
    text_format = _text_format(body.get("text"))
    # The chat path's options, under the names the Responses API gives them.
    options = {k: body[k] for k in ("temperature", "top_p", "top_k", "min_p", "seed",
                                    "stream", "repeat_penalty", "presence_penalty",
                                    "frequency_penalty") if k in body}
    if text_format["type"] != "text":
        options["response_format"] = {
            "type": text_format["type"],
            "json_schema": {"schema": text_format.get("schema")}}
    decoding = schemas.parse_decoding(options, body.get("max_output_tokens"),
                                      "max_output_tokens", max_tokens_limit)
    if LOGPROBS in _include(body.get("include")):
        decoding = replace(decoding, logprobs=_top_logprobs(body.get("top_logprobs")))
    store = body.get("store")
    return ResponsesRequest(
        model=schemas.parse_model(body), input=_input(body["input"]),
        instructions=instructions or None, decoding=decoding,
        previous_response_id=previous, store=store is not False,
        metadata=metadata, text_format=text_format)


def _include(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("'include' must be an array of strings", param="include")
    return value


def _top_logprobs(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= schemas.MAX_TOP_LOGPROBS:
        raise BadRequest(f"'top_logprobs' must be an integer from 0 to "
                         f"{schemas.MAX_TOP_LOGPROBS}", param="top_logprobs")
    return value


def _input(raw: Any) -> tuple[dict[str, Any], ...]:
    """`input` as chat messages, through the one chat message parser."""
    if isinstance(raw, str):
        if not raw:
            raise BadRequest("'input' must not be empty", param="input")
        return schemas.parse_messages([{"role": "user", "content": raw}])
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'input' must be a string or a non-empty array of message items",
                         param="input")
    messages = []
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            kind = item.get("type") if isinstance(item, dict) else type(item).__name__
            raise BadRequest(f"{param} must be a message item; {kind!r} items are not "
                             f"supported", param=param)
        role = item.get("role")
        if role not in INPUT_ROLES:
            raise BadRequest(f"{param}.role must be one of {sorted(INPUT_ROLES)}, got "
                             f"{role!r}", param=f"{param}.role")
        messages.append({"role": role, "content": _content(item.get("content"), param)})
    return schemas.parse_messages(messages)


def _content(content: Any, param: str) -> Any:
    """Responses content parts (input_text, output_text) as chat text parts."""
    if not isinstance(content, list):
        return content  # a string, or an error the chat parser words
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise BadRequest(f"{param}.content[{j}] must be an input_text or output_text "
                             f"part; {kind!r} parts are not supported",
                             param=f"{param}.content[{j}]")
        parts.append({"type": "text", "text": part.get("text")})
    return parts


def _text_format(text: Any) -> dict[str, Any]:
    """`text.format`, normalised to what the Response object echoes back."""
    if text is None:
        return {"type": "text"}
    if not isinstance(text, dict):
        raise BadRequest("'text' must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}
    if not isinstance(fmt, dict):
        raise BadRequest("'text.format' must be an object", param="text.format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise BadRequest("'text.format.schema' must be a JSON Schema object",
                             param="text.format.schema")
        if not isinstance(fmt.get("name"), str):
            raise BadRequest("'text.format.name' is required", param="text.format.name")
        shaped = {"type": "json_schema", "name": fmt["name"], "schema": fmt["schema"],
                  "strict": bool(fmt.get("strict"))}
        if isinstance(fmt.get("description"), str):
            shaped["description"] = fmt["description"]
        return shaped
    raise BadRequest("'text.format.type' must be 'text', 'json_object' or 'json_schema', "
                     f"got {kind!r}", param="text.format.type")


# --- the objects -----------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Draft:
    """One response while it is produced: ids and the request it answers."""

    request: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: new_id("resp"))
    message_id: str = field(default_factory=lambda: new_id("msg"))
    created_at: int = field(default_factory=lambda: int(time.time()))


def message_item(draft: Draft, text: str, status: str,
                 logprobs: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
    content = [] if status == "in_progress" else [_text_part(text, logprobs)]
    return {"id": draft.message_id, "type": "message", "status": status,
            "role": "assistant", "content": content}


def _text_part(text: str, logprobs: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [],
            "logprobs": _logprobs(logprobs)}


def _logprobs(tokens: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """The Responses API's LogProb entries: chat's shape (token, logprob, bytes, top)."""
    return list(responses.chat_logprobs(tokens)["content"]) if tokens else []


def status_of(last: TokenEvent | None) -> str:
    if last is None:
        return "in_progress"
    return "incomplete" if last.finish_reason == "length" else "completed"


def response_object(draft: Draft, text: str = "", last: TokenEvent | None = None,
                    logprobs: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
    """The Response object: in progress (`last` None: no output, no usage yet) or
    finished."""
    req, status = draft.request, status_of(last)
    sampling = req.decoding.sampling
    output = [] if last is None else [message_item(draft, text, status, logprobs)]
    usage = {} if last is None else {"usage": {
        "input_tokens": last.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": last.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": last.prompt_tokens + last.completion_tokens}}
    return {
        "id": draft.id, "object": "response", "created_at": draft.created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete"
        else None,
        "instructions": req.instructions, "max_output_tokens": req.decoding.max_tokens,
        "model": draft.model, "output": output, "parallel_tool_calls": True,
        "previous_response_id": req.previous_response_id, "reasoning": None,
        "store": req.store, "temperature": sampling.temperature, "top_p": sampling.top_p,
        "text": {"format": dict(req.text_format)}, "tool_choice": "auto", "tools": [],
        "truncation": "disabled", "metadata": dict(req.metadata),
        "top_logprobs": req.decoding.logprobs or 0, **usage,
    }


# --- the event stream ------------------------------------------------------------------


class EventWriter:
    """SSE bytes for one streamed response, numbering every event.

    The text deltas are the hot path: their envelope is encoded once and each token
    only fills in its escaped text and its sequence number.
    """

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.seq = 0
        ids = json.dumps(draft.message_id)
        self._delta_open = (b'event: response.output_text.delta\ndata: {"type":'
                            b'"response.output_text.delta","item_id":' + ids.encode()
                            + b',"output_index":0,"content_index":0,"logprobs":[],"delta":')

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return (f"event: {kind}\ndata: ".encode()
                + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")

    def opening(self) -> bytes:
        """Everything before the first delta: the response, its message, its text part."""
        d = self.draft
        where = {"item_id": d.message_id, "output_index": 0, "content_index": 0}
        return b"".join([
            self._event("response.created", response=response_object(d)),
            self._event("response.in_progress", response=response_object(d)),
            self._event("response.output_item.added", output_index=0,
                        item=message_item(d, "", "in_progress")),
            self._event("response.content_part.added", **where, part=_text_part("")),
        ])

    def delta(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        """One piece of text, with the logprobs of its tokens when they were asked for."""
        if logprobs:
            where = {"item_id": self.draft.message_id, "output_index": 0, "content_index": 0}
            return self._event("response.output_text.delta", **where, delta=text,
                               logprobs=_logprobs(logprobs))
        out = (self._delta_open + json.dumps(text).encode() + b',"sequence_number":'
               + str(self.seq).encode() + b"}\n\n")
        self.seq += 1
        return out

    def closing(self, text: str, last: TokenEvent, logprobs: Sequence[TokenLogprob] = ()
                ) -> tuple[bytes, dict[str, Any]]:
        """The done events and the final one; also the finished Response object."""
        d = self.draft
        where = {"item_id": d.message_id, "output_index": 0, "content_index": 0}
        final = response_object(d, text, last, logprobs)
        status = final["status"]
        return b"".join([
            self._event("response.output_text.done", **where, text=text,
                        logprobs=_logprobs(logprobs)),
            self._event("response.content_part.done", **where,
                        part=_text_part(text, logprobs)),
            self._event("response.output_item.done", output_index=0,
                        item=message_item(d, text, status, logprobs)),
            self._event(f"response.{status}", response=final),
        ]), final

    def error(self, envelope: Mapping[str, Any]) -> bytes:
        """An `error` event (headers are gone): the client raises on it."""
        err = envelope.get("error", {})
        return self._event("error", code=err.get("code"), message=err.get("message"),
                           param=err.get("param"))


# --- the store -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """A finished response and the conversation it ends (for previous_response_id)."""

    response: dict[str, Any]
    conversation: tuple[dict[str, Any], ...]


class ResponseStore:
    """The last `capacity` stored responses of this instance, oldest forgotten first.

    Thread-safe: Lambda and uvicorn both call it from one event loop, the CLI may not.
    """

    def __init__(self, capacity: int = STORE_SIZE) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def history(self, previous_id: str | None) -> tuple[dict[str, Any], ...]:
        """The turns before a request that names `previous_id` (404 if unknown)."""
        if previous_id is None:
            return ()
        return self._get(previous_id, "previous_response_id").conversation

    def get(self, response_id: str) -> dict[str, Any]:
        return self._get(response_id, None).response

    def delete(self, response_id: str) -> None:
        with self._lock:
            if self._items.pop(response_id, None) is None:
                raise NotFound(self._missing(response_id))

    def put(self, request: ResponsesRequest, response: dict[str, Any], text: str,
            history: tuple[dict[str, Any], ...]) -> None:
        """Keep a finished response, if its request asked to be stored."""
        if not request.store:
            return
        turn = history + request.input + ({"role": "assistant", "content": text},)
        with self._lock:
            self._items[response["id"]] = Stored(response, turn)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def _get(self, response_id: str, param: str | None) -> Stored:
        with self._lock:
            found = self._items.get(response_id)
            if found is None:
                raise NotFound(self._missing(response_id), param=param)
            self._items.move_to_end(response_id)
            return found

    def _missing(self, response_id: str) -> str:
        return (f"no response with id {response_id!r} on this instance (responses are "
                f"kept in memory, per instance, the last {self.capacity})")
