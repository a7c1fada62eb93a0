"""The Responses API's output items and streamed events (`/v1/responses`).

`EventWriter` turns what the engine writes into output items and the events OpenAI
sends for them, numbered by `sequence_number`: response.created, response.in_progress,
then per item, in the order the model wrote them,

* a message (its text): response.output_item.added, response.content_part.added,
  response.output_text.delta ..., response.output_text.done,
  response.content_part.done, response.output_item.done;
* a function call (tools active): response.output_item.added (a `function_call` item,
  arguments ""), response.function_call_arguments.delta ...,
  response.function_call_arguments.done, response.output_item.done;

then response.completed (or response.incomplete when `max_output_tokens` cut the
answer, as OpenAI does). An answer with no text and no call still has its (empty)
message. The non-streamed path runs the same writer with `encode=False` (it numbers
events but renders none), so a response reads the same streamed or not.

With tools, text goes through core.openai.tool_output's OutputParser (the chat path's),
with `reasoning=False`: a Responses message has no field for a <think> block, so it stays
in the text as the model wrote it, as it does without tools.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from core.engine.protocol import TokenEvent, TokenLogprob
from core.openai import responses
from core.openai.responses_api import Draft, new_id, response_object, status_of
from core.openai.tool_output import OutputParser


def _text_part(text: str, logprobs: Sequence[TokenLogprob] = ()) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [],
            "logprobs": _logprobs(logprobs)}


def _logprobs(tokens: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """The Responses API's LogProb entries: chat's shape (token, logprob, bytes, top)."""
    return list(responses.chat_logprobs(tokens)["content"]) if tokens else []


class EventWriter:
    """SSE bytes for one response, numbering every event, and its output items.

    The text deltas are the hot path: their envelope is encoded once per message and
    each token only fills in its escaped text and its sequence number.
    """

    def __init__(self, draft: Draft, parser: OutputParser | None = None, *,
                 encode: bool = True) -> None:
        """`parser`: the splitter of text and tool calls when tools are active."""
        self.draft, self.parser, self.encode = draft, parser, encode
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items
        self._item: dict[str, Any] | None = None  # the open one
        self._pieces: list[str] = []  # its text or arguments so far
        self._logprobs: list[TokenLogprob] = []
        self._delta_open = b""
        self.final: dict[str, Any] = {}  # the finished Response object, once closed

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        if not self.encode:
            return b""
        return (f"event: {kind}\ndata: ".encode()
                + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")

    def _where(self) -> dict[str, Any]:
        assert self._item is not None
        where = {"item_id": self._item["id"], "output_index": len(self.output)}
        return where if self._item["type"] == "function_call" else {**where, "content_index": 0}

    # -- the stream -------------------------------------------------------------------
    def opening(self) -> bytes:
        """The response's first two events."""
        return (self._event("response.created", response=response_object(self.draft))
                + self._event("response.in_progress", response=response_object(self.draft)))

    def tokens(self, event: TokenEvent) -> bytes:
        """One engine event: its text (split into text and calls when tools are active)
        and, riding on its text, its logprobs."""
        if self.parser is None:
            return self.text(event.text, event.logprobs) \
                if event.text or event.logprobs else b""
        pieces = self.parser.feed(event.text) if event.text else []
        if event.finish_reason is not None:
            pieces += self.parser.finish()
        out, logprobs = [], event.logprobs
        for piece in pieces:
            if piece.kind == "call":
                out.append(self.call(piece.id, piece.name))
            elif piece.kind == "arguments":
                out.append(self.arguments(piece.text))
            else:
                out.append(self.text(piece.text, logprobs))
                logprobs = ()
        return b"".join(out)

    def text(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        """A piece of message text (opening the message if a call or nothing was open)."""
        head = b""
        if self._item is None or self._item["type"] != "message":
            head = self._open_message()
        self._pieces.append(text)
        self._logprobs.extend(logprobs)
        if not self.encode:
            self.seq += 1
            return head
        if logprobs:
            return head + self._event("response.output_text.delta", **self._where(),
                                      delta=text, logprobs=_logprobs(logprobs))
        out = (self._delta_open + json.dumps(text).encode() + b',"sequence_number":'
               + str(self.seq).encode() + b"}\n\n")
        self.seq += 1
        return head + out

    def call(self, call_id: str, name: str) -> bytes:
        """A new function call, its name known, its arguments to come."""
        return self._open({"id": new_id("fc"), "type": "function_call",
                           "status": "in_progress", "arguments": "", "call_id": call_id,
                           "name": name})

    def arguments(self, text: str) -> bytes:
        """More of the open call's arguments."""
        self._pieces.append(text)
        return self._event("response.function_call_arguments.delta", **self._where(),
                           delta=text)

    def closing(self, last: TokenEvent) -> tuple[bytes, dict[str, Any]]:
        """The done events and the final one; also the finished Response object."""
        status = status_of(last)
        head = b"" if self.output or self._item else self._open_message()
        tail = self._close(status)
        final = self.final = response_object(self.draft, last, self.output)
        return head + tail + self._event(f"response.{status}", response=final), final

    def error(self, envelope: Mapping[str, Any]) -> bytes:
        """An `error` event (headers are gone): the client raises on it."""
        err = envelope.get("error", {})
        return self._event("error", code=err.get("code"), message=err.get("message"),
                           param=err.get("param"))

    # -- items ------------------------------------------------------------------------
    def _open_message(self) -> bytes:
        return self._open({"id": new_id("msg"), "type": "message", "status": "in_progress",
                           "role": "assistant", "content": []})

    def _open(self, item: dict[str, Any]) -> bytes:
        head = self._close("completed")
        self._item, self._pieces, self._logprobs = item, [], []
        out = head + self._event("response.output_item.added",
                                 output_index=len(self.output), item=item)
        if item["type"] == "message":
            where = self._where()
            self._delta_open = (
                b'event: response.output_text.delta\ndata: {"type":'
                b'"response.output_text.delta","item_id":' + json.dumps(item["id"]).encode()
                + b',"output_index":' + str(where["output_index"]).encode()
                + b',"content_index":0,"logprobs":[],"delta":')
            out += self._event("response.content_part.added", **where, part=_text_part(""))
        return out

    def _close(self, status: str) -> bytes:
        """Finish the open item, if any, with `status`."""
        item = self._item
        if item is None:
            return b""
        where, text = self._where(), "".join(self._pieces)
        if item["type"] == "message":
            part = _text_part(text, self._logprobs)
            done = {**item, "status": status, "content": [part]}
            out = (self._event("response.output_text.done", **where, text=text,
                               logprobs=part["logprobs"])
                   + self._event("response.content_part.done", **where, part=part))
        else:
            done = {**item, "status": status, "arguments": text}
            out = self._event("response.function_call_arguments.done", **where,
                              name=item["name"], arguments=text)
        out += self._event("response.output_item.done", output_index=where["output_index"],
                           item=done)
        self.output.append(done)
        self._item = None
        return out
