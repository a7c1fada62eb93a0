"""core.openai.responses: the byte-spliced SSE chunks must equal OpenAI's JSON shapes."""

from __future__ import annotations

import base64
import json
import struct

from core.engine.protocol import ModelInfo, TokenEvent, TokenLogprob
from core.errors import ContextOverflow, ModelUnavailable, QueueFull
from core.openai.responses import (
    DONE,
    Choice,
    ChunkWriter,
    chat_completion,
    embeddings,
    error_body,
    model_list,
    text_completion,
)
from core.openai.tool_output import Collected
from tests.openapi_check import check
from tiers.errors import IntegrityError


def decode(chunk: bytes) -> dict:
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
    return json.loads(chunk[len(b"data: "):])


LAST = TokenEvent(text="", finish_reason="length", prompt_tokens=7, completion_tokens=3)


def test_chat_chunks_are_valid_json_with_escaped_text():
    w = ChunkWriter("chat", "chatcmpl-1", 123, "gemma")
    role = decode(w.role())
    assert role["object"] == "chat.completion.chunk" and role["id"] == "chatcmpl-1"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                           "refusal": None}
    tricky = 'a "quote"\n\\ é 🙂 </s>'
    tok = decode(w.token(tricky))
    assert tok["choices"][0]["delta"] == {"content": tricky}
    assert tok["choices"][0]["finish_reason"] is None
    fin = decode(w.finish(LAST))
    assert fin["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                 "finish_reason": "length"}
    use = decode(w.usage(7, 3))
    assert use["choices"] == [] and use["usage"] == {"prompt_tokens": 7,
                                                     "completion_tokens": 3,
                                                     "total_tokens": 10}
    assert DONE == b"data: [DONE]\n\n"


def test_text_chunks():
    w = ChunkWriter("text", "cmpl-1", 5, "m")
    tok = decode(w.token("hi"))
    assert tok["object"] == "text_completion" and tok["choices"][0]["text"] == "hi"
    stop = TokenEvent(text="", finish_reason="stop", prompt_tokens=1, completion_tokens=1)
    assert decode(w.finish(stop))["choices"][0]["finish_reason"] == "stop"


def test_complete_objects():
    chat = chat_completion(id="c", created=1, model="m",
                           choices=[Choice(0, "hello", LAST, output=Collected("hello", None))])
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "hello",
                                             "refusal": None}
    assert chat["usage"]["total_tokens"] == 10
    check(chat, "CreateChatCompletionResponse")
    text = text_completion(id="t", created=1, model="m", choices=[Choice(0, "x", LAST)])
    assert text["choices"][0]["text"] == "x" and text["object"] == "text_completion"
    check(text, "CreateCompletionResponse")
    cancelled = TokenEvent(text="", finish_reason="cancelled")
    assert chat_completion(id="c", created=1, model="m", choices=[Choice(0, "", cancelled)]
                           )["choices"][0]["finish_reason"] == "stop"


CAFE = TokenLogprob("caf", b"caf", -0.5, (TokenLogprob("caf", b"caf", -0.5),
                                          TokenLogprob("tea", b"tea", -1.5)))
HALF_E = TokenLogprob("\ufffd", b"\xc3", -0.25, ())  # half of "é": bytes keep it exact


def test_n_choices_share_the_prompt_in_usage():
    second = TokenEvent(text="", finish_reason="stop", prompt_tokens=7, completion_tokens=2,
                        index=1)
    out = chat_completion(id="c", created=1, model="m",
                          choices=[Choice(0, "a", LAST), Choice(1, "b", second)])
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    check(out, "CreateChatCompletionResponse")


def test_chat_logprobs_shape():
    out = chat_completion(id="c", created=1, model="m",
                          choices=[Choice(0, "caf\ufffd", LAST, [CAFE, HALF_E])])
    check(out, "CreateChatCompletionResponse")
    content = out["choices"][0]["logprobs"]["content"]
    assert content[0] == {"token": "caf", "logprob": -0.5, "bytes": [99, 97, 102],
                          "top_logprobs": [{"token": "caf", "logprob": -0.5,
                                            "bytes": [99, 97, 102]},
                                           {"token": "tea", "logprob": -1.5,
                                            "bytes": [116, 101, 97]}]}
    assert content[1]["bytes"] == [0xC3] and content[1]["top_logprobs"] == []
    assert out["choices"][0]["logprobs"]["refusal"] is None


def test_text_logprobs_shape():
    scored = text_completion(id="t", created=1, model="m",
                             choices=[Choice(0, "caftea", LAST, [CAFE, CAFE])])
    check(scored, "CreateCompletionResponse")
    assert scored["choices"][0]["logprobs"]["text_offset"] == [0, 3]
    # A prompt's first token (no BOS before it) has nothing to be scored against: null,
    # as OpenAI's echo sends it (its published schema says number; lm-eval expects null).
    first = TokenLogprob("Once", b"Once", None)
    out = text_completion(id="t", created=1, model="m",
                          choices=[Choice(0, "Oncecaf", LAST, [first, CAFE])])
    assert out["choices"][0]["logprobs"] == {
        "tokens": ["Once", "caf"], "token_logprobs": [None, -0.5],
        "top_logprobs": [None, {"caf": -0.5, "tea": -1.5}], "text_offset": [0, 4]}


def test_streamed_logprobs_and_indices():
    w = ChunkWriter("chat", "chatcmpl-1", 1, "m")
    chunk = decode(w.token("caf", 2, [CAFE]))
    check(chunk, "CreateChatCompletionStreamResponse")
    assert chunk["choices"][0]["index"] == 2
    assert chunk["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    assert decode(w.role(2))["choices"][0]["index"] == 2
    last = TokenEvent(text="", finish_reason="stop", index=2)
    assert decode(w.finish(last))["choices"][0]["index"] == 2
    t = ChunkWriter("text", "cmpl-1", 1, "m")
    decode(t.token("Once"))
    shaped = decode(t.token("caf", 0, [CAFE]))["choices"][0]["logprobs"]
    assert shaped["text_offset"] == [4]  # offsets run on across the stream


def test_embeddings_base64_is_little_endian_float32():
    vec = [0.5, -1.25, 3.0]
    out = embeddings(model="m", vectors=[vec], prompt_tokens=4, encoding_format="base64")
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == vec
    plain = embeddings(model="m", vectors=[vec, vec], prompt_tokens=4,
                       encoding_format="float")
    assert [d["index"] for d in plain["data"]] == [0, 1]
    assert plain["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_model_list():
    info = ModelInfo(name="gemma", architecture="gemma3", n_ctx=512, n_ctx_train=32768,
                     chat_template=None, file_type="Q4_K_M", size_bytes=10)
    out = model_list([info], created=9)
    assert out["data"][0]["id"] == "gemma" and out["data"][0]["object"] == "model"
    assert out["data"][0]["context_length"] == 512


def test_error_envelopes_use_the_one_table():
    status, body, headers = error_body(QueueFull("busy", retry_after=2.4))
    assert status == 429 and headers == {"Retry-After": "2"}
    assert body == {"error": {"message": "busy", "type": "rate_limit_error", "param": None,
                              "code": "queue_full"}}
    status, body, _ = error_body(ContextOverflow("too long", param="messages"))
    assert status == 400 and body["error"]["param"] == "messages"
    assert body["error"]["code"] == "context_length_exceeded"
    assert error_body(ModelUnavailable("loading"))[0] == 503
    status, body, _ = error_body(IntegrityError("chunk 3 digest mismatch"))
    assert status == 503 and body["error"]["code"] == "integrity_error"
    status, body, _ = error_body(RuntimeError("/secret/path exploded"))
    assert status == 500 and "/secret" not in body["error"]["message"]
