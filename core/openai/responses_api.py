"""OpenAI's Responses API (`/v1/responses`): its request, its objects and its events.

A Responses request is a chat request in other words: `input` (a string or a list of
message, `function_call` and `function_call_output` items) plus `instructions` becomes
chat messages (assistant `tool_calls`, `role: tool` turns), and the flat function `tools`
become a chat `ToolSpec` (core.openai.tools), so they run through the same template,
tool format, grammar, engine and sampler as `/v1/chat/completions`. What is specific
lives here:

- `parse` turns a CreateResponse body into a `ResponsesRequest` (pure, 400s with `param`);
- `response_object` renders the Response object (create, `response.completed`, GET);
- `ResponseStore` keeps finished responses for GET and `previous_response_id`.

Its output items and streamed events are core.openai.responses_events's.

The store is in memory, bounded and per instance: a response is found only by the
instance (the process, the Lambda execution environment) that produced it, and the
oldest ones are forgotten first. As in OpenAI's API, `instructions` are not carried over
by `previous_response_id`; the earlier turns' input and output are.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.engine.protocol import TokenEvent
from core.errors import BadRequest, NotFound
from core.openai import schemas, tools

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
    tools: tools.ToolSpec | None = None
    tools_echo: tuple[dict[str, Any], ...] = ()  # `tools` as the Response object shows them
    tool_choice: str | dict[str, str] = "auto"  # the same, for `tool_choice`

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
    for name in ("conversation", "prompt"):
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
    spec = tools.parse_tool_spec(body, flat=True)
    return ResponsesRequest(
        model=schemas.parse_model(body), input=_input(body["input"]),
        instructions=instructions or None, decoding=decoding,
        previous_response_id=previous, store=store is not False,
        metadata=metadata, text_format=text_format, tools=spec,
        tools_echo=_tools_echo(body.get("tools") or []),
        tool_choice=_choice_echo(spec, body.get("tool_choice")))


def _tools_echo(raw: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The (already validated) function tools as OpenAI echoes them: every field, `strict`
    defaulting to true as OpenAI's does. Forced calls are grammar-constrained whatever
    `strict` says; `auto` calls are parsed, not constrained."""
    out = []
    for i, tool in enumerate(raw):
        strict = tool.get("strict", True)
        if strict is not None and not isinstance(strict, bool):
            raise BadRequest(f"tools[{i}].strict must be a boolean", param=f"tools[{i}].strict")
        out.append({"type": "function", "name": tool["name"],
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": True if strict is None else strict})
    return tuple(out)


def _choice_echo(spec: tools.ToolSpec | None, raw: Any) -> str | dict[str, str]:
    if spec is None:
        return raw if raw in ("none", "auto") else "auto"
    if spec.forced and spec.choice != "required":
        return {"type": "function", "name": spec.choice}
    return spec.choice


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
    """`input` as chat messages, through the one chat message parser: `function_call`
    items become the `tool_calls` of an assistant turn (joining the assistant message
    just before them, as one turn's output reads back), `function_call_output` items
    `role: tool` turns."""
    if isinstance(raw, str):
        if not raw:
            raise BadRequest("'input' must not be empty", param="input")
        return schemas.parse_messages([{"role": "user", "content": raw}])
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'input' must be a string or a non-empty array of items",
                         param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) \
            else type(item).__name__
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in INPUT_ROLES:  # [] is unhashable
                raise BadRequest(f"{param}.role must be one of {sorted(INPUT_ROLES)}, got "
                                 f"{role!r}", param=f"{param}.role")
            messages.append({"role": role, "content": _content(item.get("content"), param)})
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", param), "type": "function",
                    "function": {"name": _string(item, "name", param),
                                 "arguments": _string(item, "arguments", param, empty=True)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", param),
                             "content": _call_output(item.get("output"), f"{param}.output")})
        else:
            raise BadRequest(f"{param} must be a message, function_call or "
                             f"function_call_output item; {kind!r} items are not supported",
                             param=param)
    return schemas.parse_messages(messages)


def _string(item: Mapping[str, Any], key: str, param: str, empty: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not (value or empty):
        raise BadRequest(f"{param}.{key} must be a {'' if empty else 'non-empty '}string",
                         param=f"{param}.{key}")
    return value


def _call_output(output: Any, param: str) -> str:
    """A function_call_output's `output`: a string, or input_text parts (joined with
    newlines, as chat text parts are)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise BadRequest(f"{param} must be a string or an array of input_text parts",
                         param=param)
    texts = []
    for j, part in enumerate(output):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS \
                or not isinstance(part.get("text"), str):
            raise BadRequest(f"{param}[{j}] must be an input_text part", param=f"{param}[{j}]")
        texts.append(part["text"])
    return "\n".join(texts)


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
    """One response while it is produced: its id and the request it answers."""

    request: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))


def status_of(last: TokenEvent | None) -> str:
    if last is None:
        return "in_progress"
    return "incomplete" if last.finish_reason == "length" else "completed"


def response_object(draft: Draft, last: TokenEvent | None = None,
                    output: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The Response object: in progress (`last` None: no output, no usage yet) or
    finished, with its output items (core.openai.responses_events.EventWriter's)."""
    req, status = draft.request, status_of(last)
    sampling = req.decoding.sampling
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
        "model": draft.model, "output": [] if last is None else [dict(i) for i in output],
        "parallel_tool_calls": req.tools.parallel if req.tools else True,
        "previous_response_id": req.previous_response_id, "reasoning": None,
        "store": req.store, "temperature": sampling.temperature, "top_p": sampling.top_p,
        "text": {"format": dict(req.text_format)}, "tool_choice": req.tool_choice,
        "tools": [dict(t) for t in req.tools_echo],
        "truncation": "disabled", "metadata": dict(req.metadata),
        "top_logprobs": req.decoding.logprobs or 0, **usage,
    }


def assistant_turn(output: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A response's output items as the chat assistant message that continues from it."""
    text = "".join(part["text"] for item in output if item["type"] == "message"
                   for part in item["content"])
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


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

    def put(self, request: ResponsesRequest, response: dict[str, Any],
            history: tuple[dict[str, Any], ...]) -> None:
        """Keep a finished response, if its request asked to be stored."""
        if not request.store:
            return
        turn = history + request.input + (assistant_turn(response["output"]),)
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
