"""OpenAI response objects and SSE chunks, built from the engine's TokenEvents.

Plain dicts and bytes, no web framework: the HTTP handler, the Lambda handler (through
the same app) and the CLI all render the same shapes. Per-token work is one
`json.dumps` of the token text spliced between pre-encoded halves of the chunk, so a
stream adds microseconds per token, not a dict build and a full serialisation.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from core.errors import StratoError, status_of
from core.engine.protocol import ModelInfo, TokenEvent

DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(event: TokenEvent) -> str:
    """OpenAI knows "stop" and "length"; a cancelled stream never reaches a client."""
    return "length" if event.finish_reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# --- complete (non-streamed) answers ---------------------------------------------------


def chat_completion(*, id: str, created: int, model: str, text: str,
                    last: TokenEvent) -> dict[str, Any]:
    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": finish_reason(last)}],
        "usage": usage(last.prompt_tokens, last.completion_tokens),
    }


def text_completion(*, id: str, created: int, model: str, text: str,
                    last: TokenEvent) -> dict[str, Any]:
    return {
        "id": id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "text": text, "logprobs": None,
                     "finish_reason": finish_reason(last)}],
        "usage": usage(last.prompt_tokens, last.completion_tokens),
    }


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
                else "text_completion", "created": self.created, "model": self.model,
                "system_fingerprint": None}
        self._head = json.dumps(head, separators=(",", ":"))[:-1].encode()
        if self.kind == "chat":
            self._token_open = self._head + b',"choices":[{"index":0,"delta":{"content":'
            self._token_close = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._token_open = self._head + b',"choices":[{"index":0,"text":'
            self._token_close = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> bytes:
        """The first chat chunk names the role, as OpenAI's does; text streams have none."""
        return (b"data: " + self._head + b',"choices":[{"index":0,"delta":{"role":'
                b'"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n')

    def token(self, text: str) -> bytes:
        return b"data: " + self._token_open + json.dumps(text).encode() + self._token_close

    def finish(self, last: TokenEvent) -> bytes:
        body = b'{}' if self.kind == "chat" else b'""'
        field = b'"delta":' if self.kind == "chat" else b'"text":'
        return (b"data: " + self._head + b',"choices":[{"index":0,' + field + body
                + b',"logprobs":null,"finish_reason":"' + finish_reason(last).encode()
                + b'"}]}\n\n')

    def usage(self, last: TokenEvent) -> bytes:
        """The include_usage chunk: empty choices, usage filled (OpenAI's shape)."""
        tail = json.dumps(usage(last.prompt_tokens, last.completion_tokens),
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
