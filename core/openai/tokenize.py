"""POST /tokenize and /detokenize in llama-server's shapes (plus `model`, as strato
serves several models).

    /tokenize    {"content": str, "add_special": false, "with_pieces": false, "model"}
              -> {"tokens": [int, ...]}  or, with_pieces, [{"id": int, "piece": str}, ...]
    /detokenize  {"tokens": [int, ...], "model"} -> {"content": str}

Special tokens written in the text (`<start_of_turn>`) are always parsed as such, as
the chat path does; a piece that is not whole UTF-8 on its own shows U+FFFD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from core.errors import BadRequest

MAX_TOKENS = 1 << 20  # a detokenize body is bounded by max_body anyway; this bounds ids


@dataclass(frozen=True)
class TokenizeRequest:
    model: str | None
    content: str
    add_special: bool = False
    with_pieces: bool = False


@dataclass(frozen=True)
class DetokenizeRequest:
    model: str | None
    tokens: tuple[int, ...]


def parse_tokenize(body: Mapping[str, Any]) -> TokenizeRequest:
    content = body.get("content")
    if not isinstance(content, str):
        raise BadRequest("'content' must be a string", param="content")
    return TokenizeRequest(_model(body), content, _flag(body, "add_special"),
                           _flag(body, "with_pieces"))


def parse_detokenize(body: Mapping[str, Any]) -> DetokenizeRequest:
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or len(tokens) > MAX_TOKENS or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise BadRequest("'tokens' must be an array of token ids (integers)",
                         param="tokens")
    return DetokenizeRequest(_model(body), tuple(tokens))


def tokens_body(tokens: list[int], pieces: list[str] | None) -> dict[str, Any]:
    if pieces is None:
        return {"tokens": tokens}
    return {"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces)]}


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", param=name)
    return value


def _model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    return model or None
