"""OpenAI response objects and SSE chunks, built from the engine's TokenEvents.

Plain dicts and bytes, no web framework: the HTTP handler, the Lambda handler (through
the same app) and the CLI all render the same shapes. Per-token work is one
`json.dumps` of the token text spliced between pre-encoded halves of the chunk, so a
stream adds microseconds per token, not a dict build and a full serialisation.
`system_fingerprint` is left out: OpenAI's schema makes it a string when present, and
strato has no backend fingerprint to give.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from core.engine.protocol import ModelInfo, TokenEvent, TokenLogprob
from core.errors import StratoError, status_of
from core.openai.tool_output import Collected, Delta

DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(event: TokenEvent, tool_calls: bool = False) -> str:
    """"length", else "tool_calls" when the turn called tools, else "stop"; a cancelled
    stream never reaches a client."""
    if event.finish_reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# --- complete (non-streamed) answers ---------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One of a request's n answers, complete: its text, its final event, for chat the
    parsed output (content, reasoning, tool calls) and, when the request asked for them,
    its tokens' logprobs (for an echo, the prompt's first)."""

    index: int
    text: str
    last: TokenEvent
    logprobs: Sequence[TokenLogprob] | None = None
    output: Collected | None = None


def total_usage(choices: Sequence[Choice]) -> dict[str, int]:
    """The prompt once (the n answers share it), every answer's tokens."""
    return usage(choices[0].last.prompt_tokens, sum(c.last.completion_tokens for c in choices))


def chat_completion(*, id: str, created: int, model: str,
                    choices: Sequence[Choice]) -> dict[str, Any]:
    def message(c: Choice) -> dict[str, Any]:
        return chat_message(c.output or Collected(c.text, None, []))

    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": c.index, "message": message(c),
                     "logprobs": None if c.logprobs is None else chat_logprobs(c.logprobs),
                     "finish_reason": finish_reason(c.last, bool(c.output
                                                                 and c.output.tool_calls))}
                    for c in choices],
        "usage": total_usage(choices),
    }


def chat_message(output: Collected) -> dict[str, Any]:
    """The assistant message: `refusal` is always null (strato never refuses on its
    own), `tool_calls` and `reasoning_content` appear only when there are some."""
    message: dict[str, Any] = {"role": "assistant", "content": output.content,
                               "refusal": None}
    if output.reasoning is not None:
        message["reasoning_content"] = output.reasoning
    if output.tool_calls:
        message["tool_calls"] = output.tool_calls
    return message


def text_completion(*, id: str, created: int, model: str,
                    choices: Sequence[Choice]) -> dict[str, Any]:
    return {
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": c.index, "text": c.text,
                     "logprobs": None if c.logprobs is None else text_logprobs(c.logprobs),
                     "finish_reason": finish_reason(c.last)} for c in choices],
        "usage": total_usage(choices),
    }


# --- logprobs --------------------------------------------------------------------------


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Chat's shape: one entry per token, with its UTF-8 bytes and its alternatives."""
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.raw),
                         "top_logprobs": [{"token": a.token, "logprob": a.logprob,
                                           "bytes": list(a.raw)} for a in t.top]}
                        for t in tokens],
            "refusal": None}


def text_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, alternatives as {token: logprob},
    and each token's character offset in the choice's text (from `offset`)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [None if t.logprob is None else {a.token: a.logprob for a in t.top}
                             for t in tokens],
            "text_offset": offsets}


# --- streamed answers ------------------------------------------------------------------


@dataclass
class ChunkWriter:
    """Encodes one stream's SSE chunks; `kind` is "chat" or "text".

    The chunk envelope (id, created, model) is fixed for a stream, so it is encoded once
    and each token only fills in its escaped text.
    """

    kind: str
    id: str
    created: int
    model: str

    def __post_init__(self) -> None:
        head = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat"
                else "text_completion", "created": self.created, "model": self.model}
        self._head = json.dumps(head, separators=(",", ":"))[:-1].encode()
        self._field = b'"delta":{"content":' if self.kind == "chat" else b'"text":'
        self._field_close = b"}" if self.kind == "chat" else b""
        self._token_open = self._open(0)
        self._token_close = self._field_close + b',"logprobs":null,"finish_reason":null}]}\n\n'
        self._offsets: dict[int, int] = {}  # text completions: characters sent per choice

    def _open(self, index: int) -> bytes:
        return (b"data: " + self._head + b',"choices":[{"index":' + str(index).encode()
                + b"," + self._field)

    def role(self, index: int = 0) -> bytes:
        """The first chat chunk names the role, as OpenAI's does; text streams have none."""
        return (b"data: " + self._head + b',"choices":[{"index":' + str(index).encode()
                + b',"delta":{"role":"assistant","content":"","refusal":null},'
                b'"logprobs":null,'
                b'"finish_reason":null}]}\n\n')

    def token(self, text: str, index: int = 0,
              logprobs: Sequence[TokenLogprob] | None = None) -> bytes:
        """One piece of text of choice `index`, with its tokens' logprobs if asked for."""
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + len(text)
        opening = self._token_open if index == 0 else self._open(index)
        if logprobs is None:
            return opening + json.dumps(text).encode() + self._token_close
        shaped = chat_logprobs(logprobs) if self.kind == "chat" \
            else text_logprobs(logprobs, offset)
        return (opening + json.dumps(text).encode() + self._field_close + b',"logprobs":'
                + json.dumps(shaped, separators=(",", ":")).encode()
                + b',"finish_reason":null}]}\n\n')

    def delta(self, d: Delta, index: int = 0,
              logprobs: Sequence[TokenLogprob] | None = None) -> bytes:
        """A chat chunk of choice `index` for one piece of parsed output
        (core.openai.tool_output): content as `token` (with `logprobs`, if given);
        reasoning as `reasoning_content`; a tool call as OpenAI streams it, index, id,
        type and name first, then argument pieces under the same index."""
        if d.kind == "content":
            return self.token(d.text, index, logprobs)
        body: dict[str, Any]
        if d.kind == "reasoning":
            body = {"reasoning_content": d.text}
        elif d.kind == "call":
            body = {"tool_calls": [{"index": d.index, "id": d.id, "type": "function",
                                    "function": {"name": d.name, "arguments": ""}}]}
        else:
            body = {"tool_calls": [{"index": d.index, "function": {"arguments": d.text}}]}
        return (b"data: " + self._head + b',"choices":[{"index":' + str(index).encode()
                + b',"delta":' + json.dumps(body, separators=(",", ":")).encode()
                + b',"logprobs":null,"finish_reason":null}]}\n\n')

    def finish(self, last: TokenEvent, tool_calls: bool = False) -> bytes:
        body = b'{}' if self.kind == "chat" else b'""'
        field = b'"delta":' if self.kind == "chat" else b'"text":'
        return (b"data: " + self._head + b',"choices":[{"index":' + str(last.index).encode()
                + b"," + field + body + b',"logprobs":null,"finish_reason":"'
                + finish_reason(last, tool_calls).encode() + b'"}]}\n\n')

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The include_usage chunk: empty choices, usage filled (OpenAI's shape)."""
        tail = json.dumps(usage(prompt_tokens, completion_tokens),
                          separators=(",", ":")).encode()
        return b"data: " + self._head + b',"choices":[],"usage":' + tail + b"}\n\n"


# --- embeddings, models, errors --------------------------------------------------------


def embeddings(*, model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int,
               encoding_format: str) -> dict[str, Any]:
    """OpenAI's list of embeddings; base64 is little-endian float32, as the client expects."""
    data = []
    for i, vec in enumerate(vectors):
        value: Any = list(vec)
        if encoding_format == "base64":
            packed = array("f", vec)
            if packed.itemsize != 4:  # pragma: no cover - every supported platform
                raise RuntimeError("float32 array expected")
            value = base64.b64encode(packed.tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def model_card(info: ModelInfo, created: int) -> dict[str, Any]:
    return {"id": info.name, "object": "model", "created": created, "owned_by": "strato",
            "architecture": info.architecture, "context_length": info.n_ctx,
            "context_length_train": info.n_ctx_train, "file_type": info.file_type,
            "size_bytes": info.size_bytes}


def model_list(infos: Iterable[ModelInfo], created: int | None = None) -> dict[str, Any]:
    created = int(time.time()) if created is None else created
    return {"object": "list", "data": [model_card(i, created) for i in infos]}


def error_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, OpenAI error envelope, extra headers) for any exception.

    Unexpected exceptions get a generic message: their text may hold paths or internals
    the caller should not see (the full traceback goes to the log instead).
    """
    status, kind, code = status_of(exc)
    if isinstance(exc, StratoError):
        message, param = exc.message, exc.param
    elif status < 500 or code != "internal_error":
        message, param = str(exc) or type(exc).__name__, getattr(exc, "param", None)
    else:
        message, param = "internal server error", None
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if status == 429 or retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after or 1)))
    return status, {"error": {"message": message, "type": kind, "param": param,
                              "code": code}}, headers
