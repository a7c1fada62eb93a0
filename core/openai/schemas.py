"""OpenAI request bodies -> typed requests, validated before any model work.

Every check here is a pure function of the body, so a malformed request costs no queue
slot, no tokenization and no model load, and each failure raises `BadRequest` with the
`param` that OpenAI clients show the user. Unknown fields are ignored (as llama.cpp's
server does) except those whose silent omission would change the answer (`best_of`,
image parts): those are refused so a client never gets a different kind of answer than
it asked for. Tools are parsed by core.openai.tools.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

from core.engine.protocol import SamplingParams
from core.errors import BadRequest
from core.openai import tools as tool_specs

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_STOP = 4  # OpenAI's limit; more would slow the per-token stop scan for nothing.
MAX_N = 128   # a sanity bound; the engine refuses n above STRATO_PARALLEL
MAX_LOGIT_BIAS = 1024
# OpenAI's limits: chat `top_logprobs` 0-20, completions `logprobs` 0-5.
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


@dataclass(frozen=True)
class ResponseFormat:
    """`json_object` (any JSON object) or `json_schema` (this schema); None means text."""

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Decoding:
    """The generation options shared by chat and text completions.

    `max_tokens` None means "until the context is full" (OpenAI's chat default); the
    handler turns it into a number once it knows the prompt length.
    """

    max_tokens: int | None
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    response_format: ResponseFormat | None = None
    n: int = 1
    logprobs: int | None = None   # None: no logprobs; k: each token's and k alternatives
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: tuple[dict[str, Any], ...]
    decoding: Decoding
    tools: tool_specs.ToolSpec | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt: str
    decoding: Decoding
    echo: bool = False
    tokens: tuple[int, ...] | None = None  # a token-array prompt (then `prompt` is "")


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str | None
    inputs: tuple[str, ...]
    encoding_format: Literal["float", "base64"] = "float"


# --- entry points -------------------------------------------------------------------


MAX_DEPTH = 64    # arrays/objects inside each other; real requests nest a handful deep


def load_json(raw: bytes) -> dict[str, Any]:
    """Decode a request body; anything but a JSON object is a 400 naming the problem.

    Strict JSON: `NaN`, `Infinity` and numbers that overflow to infinity are refused
    (Python's decoder accepts them), so is nesting deeper than MAX_DEPTH (a body of
    100,000 brackets would otherwise exhaust the decoder's recursion, and a schema
    nested a few hundred deep the grammar converter's), and so are integers longer than
    Python converts (a ValueError, not a JSONDecodeError)."""
    try:
        body = json.loads(raw, parse_constant=_non_finite, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"request body is nested more than {MAX_DEPTH} levels deep") \
            from None
    except (UnicodeDecodeError, ValueError) as exc:   # JSONDecodeError is a ValueError
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {_kind(body)}")
    if _depth(body) > MAX_DEPTH:
        raise BadRequest(f"request body is nested more than {MAX_DEPTH} levels deep")
    return body


def _non_finite(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (the body is already decoded)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_chat(body: Mapping[str, Any], *, max_tokens_limit: int) -> ChatRequest:
    """Validate a /v1/chat/completions body."""
    if "messages" not in body:
        raise BadRequest("'messages' is required", param="messages")
    messages = body["messages"]
    _refuse_unsupported(body, chat=True)
    parsed = parse_messages(messages)
    limit = _first_present(body, ("max_completion_tokens", "max_tokens"))
    decoding = parse_decoding(body, limit, None, max_tokens_limit)
    top = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if _bool(body, "logprobs", False):
        decoding = replace(decoding, logprobs=top)
    elif body.get("top_logprobs") is not None:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return ChatRequest(model=parse_model(body), messages=parsed, decoding=decoding,
                       tools=tool_specs.parse_tool_spec(body))


def parse_completion(body: Mapping[str, Any], *, max_tokens_limit: int) -> CompletionRequest:
    """Validate a /v1/completions body. One prompt per request: a string, [string], an
    array of token ids or [array of token ids]."""
    if "prompt" not in body:
        raise BadRequest("'prompt' is required", param="prompt")
    prompt, tokens = _prompt(body["prompt"])
    if "suffix" in body and body["suffix"] not in (None, ""):
        raise BadRequest("'suffix' (fill-in-the-middle) is not supported", param="suffix")
    _refuse_unsupported(body, chat=False)
    # OpenAI's legacy completions default to 16 tokens; clients rely on it being short.
    limit = body.get("max_tokens", 16)
    echo = _bool(body, "echo", False)
    # With echo, max_tokens 0 scores the prompt without generating (lm-eval does this).
    decoding = parse_decoding(body, limit, "max_tokens", max_tokens_limit,
                              allow_zero=echo)
    logprobs = body.get("logprobs")
    if logprobs is not None and logprobs is not False:
        top = _integer(body, "logprobs", 0, 0, MAX_COMPLETION_LOGPROBS)
        decoding = replace(decoding, logprobs=top, prompt_logprobs=echo)
    return CompletionRequest(model=parse_model(body), prompt=prompt, decoding=decoding,
                             echo=echo, tokens=tokens)


def _prompt(raw: Any) -> tuple[str, tuple[int, ...] | None]:
    """(text, None) or ("", token ids): the one prompt a completions request holds."""
    one = "'prompt' must be a string, an array of token ids, or an array of exactly one " \
        "of those (batched prompts are not supported)"
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], (str, list)):
        raw = raw[0]
    if isinstance(raw, str):
        return raw, None
    if not isinstance(raw, list) or not raw:
        raise BadRequest(one if isinstance(raw, list) else
                         f"'prompt' must be a string, got {_kind(raw)}", param="prompt")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in raw):
        raise BadRequest(one + "; token ids are integers from 0", param="prompt")
    return "", tuple(raw)


def parse_embeddings(body: Mapping[str, Any]) -> EmbeddingRequest:
    """Validate a /v1/embeddings body: `input` is a string or a non-empty list of them."""
    if "input" not in body:
        raise BadRequest("'input' is required", param="input")
    raw = body["input"]
    inputs: tuple[str, ...]
    if isinstance(raw, str):
        inputs = (raw,)
    elif isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw):
        inputs = tuple(raw)
    else:
        raise BadRequest("'input' must be a string or a non-empty array of strings "
                         "(token arrays are not supported)", param="input")
    if any(s == "" for s in inputs):
        raise BadRequest("'input' must not contain empty strings", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'",
                         param="encoding_format")
    if body.get("dimensions") is not None:
        raise BadRequest("'dimensions' is not supported: the model's own size is returned",
                         param="dimensions")
    return EmbeddingRequest(model=parse_model(body), inputs=inputs, encoding_format=fmt)


# --- pieces -------------------------------------------------------------------------


def parse_decoding(body: Mapping[str, Any], max_tokens: Any, max_param: str | None,
                   max_tokens_limit: int, *, allow_zero: bool = False) -> Decoding:
    """The sampling and output options of a body (chat, completions and responses)."""
    param = max_param or ("max_completion_tokens" if body.get("max_completion_tokens")
                          is not None else "max_tokens")
    defaults = SamplingParams()
    sampling = SamplingParams(
        temperature=_number(body, "temperature", defaults.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0),
        top_k=_integer(body, "top_k", defaults.top_k, 0, 1 << 20),
        min_p=_number(body, "min_p", defaults.min_p, 0.0, 1.0),
        seed=_optional_int(body, "seed"),
        repeat_penalty=_number(body, "repeat_penalty", defaults.repeat_penalty, 0.0, 10.0),
        presence_penalty=_number(body, "presence_penalty", defaults.presence_penalty,
                                 -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", defaults.frequency_penalty,
                                  -2.0, 2.0),
        logit_bias=_logit_bias(body.get("logit_bias")),
    )
    stream = _bool(body, "stream", False)
    return Decoding(
        max_tokens=_max_tokens(max_tokens, param, max_tokens_limit, 0 if allow_zero else 1),
        sampling=sampling,
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=stream and _include_usage(body.get("stream_options")),
        response_format=_response_format(body.get("response_format")),
        n=_integer(body, "n", 1, 1, MAX_N),
    )


def _max_tokens(value: Any, param: str, limit: int, minimum: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise BadRequest(f"'{param}' must be an integer, got {_kind(value)}", param=param)
    if value < minimum:
        raise BadRequest(f"'{param}' must be at least {minimum}, got {value}", param=param)
    if value > limit:
        raise BadRequest(f"'{param}' is {value}, above this server's limit of {limit}",
                         param=param)
    return int(value)


def parse_messages(messages: Any) -> tuple[dict[str, Any], ...]:
    """Chat messages normalised to {"role", "content"[, "name", "tool_calls",
    "tool_call_id"]} with text content (None only for an assistant turn that has none).

    The one message parser: the HTTP path and `core.engine.chat_template.render` (direct
    callers of the engine) both use it, so a message means the same thing wherever it
    enters; parsing a parsed message gives it back unchanged.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    return tuple(_message(m, i) for i, m in enumerate(messages))


def _message(raw: Any, index: int) -> dict[str, Any]:
    """One chat message. Text parts are joined with newlines (as vLLM does): parts are
    separate blocks of text, and "a" + "b" must not read as the word "ab"."""
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise BadRequest(f"{param} must be an object, got {_kind(raw)}", param=param)
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:   # [] or {} are unhashable
        raise BadRequest(f"{param}.role must be one of {sorted(ROLES)}, got {role!r}",
                         param=f"{param}.role")
    content = raw.get("content")
    if content is None:
        if role != "assistant":
            raise BadRequest(f"{param}.content is required", param=f"{param}.content")
    elif isinstance(content, list):
        content = _text_parts(content, f"{param}.content")
    elif not isinstance(content, str):
        raise BadRequest(f"{param}.content must be a string or an array of text parts, "
                         f"got {_kind(content)}", param=f"{param}.content")
    message: dict[str, Any] = {"role": role, "content": content}
    if isinstance(raw.get("name"), str):
        message["name"] = raw["name"]
    if role == "assistant" and raw.get("tool_calls"):
        message["tool_calls"] = tool_specs.parse_tool_calls(raw["tool_calls"],
                                                            f"{param}.tool_calls")
    if role == "tool":
        call_id = raw.get("tool_call_id")
        if not isinstance(call_id, str):
            raise BadRequest(f"{param}.tool_call_id is required for a tool message",
                             param=f"{param}.tool_call_id")
        message["tool_call_id"] = call_id
    return message


def _text_parts(parts: list[Any], param: str) -> str:
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" \
                or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else _kind(part)
            raise BadRequest(f"{param}[{i}] must be a text part ({{'type': 'text', "
                             f"'text': ...}}); {kind!r} parts are not supported",
                             param=f"{param}[{i}]")
        texts.append(part["text"])
    return "\n".join(texts)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("'stop' must be a string or an array of strings", param="stop")
    if len(stops) > MAX_STOP:
        raise BadRequest(f"'stop' allows at most {MAX_STOP} sequences", param="stop")
    return tuple(s for s in stops if s)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """{"token id": bias in [-100, 100]} as sorted pairs; ids are checked by the engine,
    which knows the vocabulary."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise BadRequest("'logit_bias' must be an object mapping token ids to numbers",
                         param="logit_bias")
    if len(value) > MAX_LOGIT_BIAS:
        raise BadRequest(f"'logit_bias' allows at most {MAX_LOGIT_BIAS} tokens",
                         param="logit_bias")
    pairs = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.strip().isdigit()):
            raise BadRequest(f"'logit_bias' keys must be token ids, got {key!r}",
                             param="logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                or not -100 <= bias <= 100:
            raise BadRequest(f"'logit_bias' values must be numbers from -100 to 100, got "
                             f"{bias!r} for token {key}", param="logit_bias")
        pairs.append((int(key), float(bias)))
    return tuple(sorted(pairs))


def _include_usage(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    return _bool(value, "include_usage", False, param="stream_options.include_usage")


def _response_format(value: Any) -> ResponseFormat | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("'response_format' must be an object", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequest("'response_format.json_schema.schema' must be a JSON Schema "
                             "object", param="response_format.json_schema")
        return ResponseFormat("json_schema", spec["schema"])
    raise BadRequest("'response_format.type' must be 'text', 'json_object' or "
                     f"'json_schema', got {kind!r}", param="response_format.type")


def _refuse_unsupported(body: Mapping[str, Any], *, chat: bool) -> None:
    if body.get("best_of") not in (None, 1):
        raise BadRequest("only best_of=1 is supported", param="best_of")


def parse_model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    if model is None or model == "":
        return None
    if not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, got {_kind(model)}", param="model")
    return model


def _first_present(body: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if body.get(name) is not None:
            return body[name]
    return None


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `"max_tokens": true` is a type error, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: Mapping[str, Any], name: str, default: float, lo: float,
            hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a number, got {_kind(value)}", param=name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise BadRequest(f"'{name}' must be an integer, got {_kind(value)}", param=name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return int(value)


def _optional_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise BadRequest(f"'{name}' must be an integer, got {_kind(value)}", param=name)
    return int(value)


def _bool(body: Mapping[str, Any], name: str, default: bool, *,
          param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{param or name}' must be a boolean, got {_kind(value)}",
                         param=param or name)
    return value


def _kind(value: Any) -> str:
    """JSON's name for a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
