"""core.openai.schemas: OpenAI bodies -> typed requests; every refusal names its param."""

from __future__ import annotations

import pytest

from core.engine.protocol import SamplingParams
from core.errors import BadRequest
from core.openai.schemas import (
    ResponseFormat,
    load_json,
    parse_chat,
    parse_completion,
    parse_embeddings,
)

LIMIT = 4096
MSG = [{"role": "user", "content": "hi"}]


def chat(**body):
    return parse_chat({"messages": MSG, **body}, max_tokens_limit=LIMIT)


def refused(fn, *args, **kwargs) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        fn(*args, **kwargs)
    return info.value


def test_load_json_refuses_malformed_and_non_objects():
    assert load_json(b'{"a": 1}') == {"a": 1}
    assert "not valid JSON" in refused(load_json, b'{"a": ').message
    assert "not valid JSON" in refused(load_json, b"\xff\xfe").message
    assert "got array" in refused(load_json, b"[1, 2]").message


@pytest.mark.parametrize("raw, says", [
    (b'{"temperature": NaN}', "NaN"), (b'{"t": Infinity}', "Infinity"),
    (b'{"t": -Infinity}', "-Infinity"), (b'{"t": 1e999}', "1e999"),
    (b'{"t": [' + b"9" * 5000 + b"]}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b'{"a": ' * 65 + b"1" + b"}" * 65, "nested"),
])
def test_load_json_refuses_non_finite_numbers_and_deep_nesting(raw, says):
    assert says in refused(load_json, raw).message


def test_load_json_accepts_nesting_up_to_the_limit():
    assert load_json(b'{"a": ' * 63 + b"[1.5]" + b"}" * 63)


def test_a_non_finite_number_is_named_not_called_a_number():
    # Direct callers of the parser (not through load_json) still get a clear message.
    message = refused(chat, temperature=float("nan")).message
    assert "got number" not in message and "NaN" in message


def test_chat_defaults_follow_llama_cpp_server():
    req = chat()
    assert req.model is None
    assert req.messages == ({"role": "user", "content": "hi"},)
    assert req.decoding.max_tokens is None  # "up to the context", resolved later
    assert req.decoding.sampling == SamplingParams()
    assert req.decoding.stop == () and not req.decoding.stream
    assert req.decoding.response_format is None


def test_chat_sampling_fields_are_carried():
    req = chat(model="m", temperature=0, top_p=0.5, top_k=7, min_p=0.1, seed=42,
               repeat_penalty=1.1, presence_penalty=-1, frequency_penalty=1.5,
               stop="\n", max_tokens=12)
    s = req.decoding.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (0.0, 0.5, 7, 0.1, 42)
    assert (s.repeat_penalty, s.presence_penalty, s.frequency_penalty) == (1.1, -1.0, 1.5)
    assert req.decoding.stop == ("\n",)
    assert req.decoding.max_tokens == 12 and req.model == "m"


def test_max_completion_tokens_wins_and_is_named_in_errors():
    assert chat(max_completion_tokens=5, max_tokens=9).decoding.max_tokens == 5
    assert refused(chat, max_completion_tokens=0).param == "max_completion_tokens"


@pytest.mark.parametrize("value", [0, -1, LIMIT + 1, 1.5, "10", True])
def test_bad_max_tokens(value):
    assert refused(chat, max_tokens=value).param == "max_tokens"


def test_stop_list_and_limits():
    assert chat(stop=["a", "", "b"]).decoding.stop == ("a", "b")
    assert refused(chat, stop=["a"] * 5).param == "stop"
    assert refused(chat, stop=3).param == "stop"
    assert refused(chat, stop=["a", 1]).param == "stop"


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", "hot"),
    ("temperature", True), ("temperature", float("nan")), ("top_p", 1.5),
    ("top_k", -1), ("top_k", 2.0), ("min_p", -0.5), ("seed", 1.5), ("seed", "x"),
    ("presence_penalty", 3), ("frequency_penalty", -3), ("repeat_penalty", -1),
    ("stream", "yes"), ("model", 5),
])
def test_wrong_types_and_ranges_name_their_param(field, value):
    err = refused(chat, **{field: value})
    assert err.param == field and err.status == 400


def test_n_is_a_positive_integer():
    assert chat(n=1).decoding.n == 1 and chat().decoding.n == 1
    assert chat(n=3).decoding.n == 3
    for bad in (0, -1, "1", 1.5, True):
        assert refused(chat, n=bad).param == "n"


def test_chat_logprobs_and_top_logprobs():
    assert chat().decoding.logprobs is None
    assert chat(logprobs=True).decoding.logprobs == 0
    assert chat(logprobs=True, top_logprobs=20).decoding.logprobs == 20
    assert chat(logprobs=False).decoding.logprobs is None
    assert refused(chat, logprobs=True, top_logprobs=21).param == "top_logprobs"
    assert refused(chat, top_logprobs=2).param == "top_logprobs"
    assert refused(chat, logprobs=1).param == "logprobs"
    assert not chat(logprobs=True).decoding.prompt_logprobs


def test_completion_logprobs_echo_and_zero_max_tokens():
    def completion(**body):
        return parse_completion({"prompt": "a", **body}, max_tokens_limit=LIMIT)
    req = completion(logprobs=2)
    assert req.decoding.logprobs == 2 and not req.decoding.prompt_logprobs
    scored = completion(logprobs=1, echo=True, max_tokens=0)
    assert scored.decoding.prompt_logprobs and scored.decoding.max_tokens == 0
    assert completion(logprobs=0).decoding.logprobs == 0
    assert refused(completion, logprobs=6).param == "logprobs"
    assert refused(completion, max_tokens=0).param == "max_tokens"  # 0 needs echo


def test_logit_bias():
    assert chat(logit_bias={"7": -100, "12": 2.5}).decoding.sampling.logit_bias == \
        ((7, -100.0), (12, 2.5))
    for bad in ({"x": 1}, {"7": 101}, {"7": "1"}, [1], {"-3": 1}):
        assert refused(chat, logit_bias=bad).param == "logit_bias"


def test_messages_required_and_validated():
    assert refused(parse_chat, {}, max_tokens_limit=LIMIT).param == "messages"
    assert refused(parse_chat, {"messages": []}, max_tokens_limit=LIMIT).param == "messages"
    assert refused(parse_chat, {"messages": "hi"}, max_tokens_limit=LIMIT).param == "messages"
    bad_role = {"messages": [{"role": "wizard", "content": "x"}]}
    assert refused(parse_chat, bad_role, max_tokens_limit=LIMIT).param == "messages[0].role"
    no_content = {"messages": MSG + [{"role": "user"}]}
    assert refused(parse_chat, no_content,
                   max_tokens_limit=LIMIT).param == "messages[1].content"
    assert refused(parse_chat, {"messages": ["hi"]}, max_tokens_limit=LIMIT).param == \
        "messages[0]"


def test_text_parts_are_joined_and_images_refused():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    req = chat(messages=[{"role": "user", "content": parts}])
    assert req.messages[0]["content"] == "a\nb"
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    err = refused(chat, messages=[{"role": "user", "content": image}])
    assert err.param == "messages[0].content[0]" and "image_url" in err.message


def test_assistant_without_content_is_allowed():
    req = chat(messages=MSG + [{"role": "assistant", "content": None}])
    assert req.messages[1] == {"role": "assistant", "content": None}  # as templates expect


def test_stream_options_only_count_when_streaming():
    assert chat(stream=True, stream_options={"include_usage": True}).decoding.include_usage
    assert not chat(stream=False, stream_options={"include_usage": True}).decoding.include_usage
    assert refused(chat, stream=True, stream_options={"include_usage": "y"}).param == \
        "stream_options.include_usage"


def test_response_format():
    assert chat(response_format={"type": "text"}).decoding.response_format is None
    assert chat(response_format={"type": "json_object"}).decoding.response_format == \
        ResponseFormat("json_object")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = chat(response_format={"type": "json_schema",
                                "json_schema": {"name": "x", "schema": schema}})
    assert fmt.decoding.response_format == ResponseFormat("json_schema", schema)
    assert refused(chat, response_format={"type": "xml"}).param == "response_format.type"
    assert refused(chat, response_format={"type": "json_schema"}).param == \
        "response_format.json_schema"


def test_unsupported_features_are_refused_not_ignored():
    assert refused(chat, tools=[{"type": "function"}]).param == "tools[0].function"
    assert refused(chat, best_of=2).param == "best_of"
    assert chat(tools=[]).messages  # an empty tool list asks for nothing


def test_completion_prompt_forms_and_default_length():
    req = parse_completion({"prompt": "Once"}, max_tokens_limit=LIMIT)
    assert req.prompt == "Once" and req.decoding.max_tokens == 16 and not req.echo
    assert parse_completion({"prompt": ["Once"], "echo": True},
                            max_tokens_limit=LIMIT).echo
    for form in ([1, 2, 3], [[1, 2, 3]]):  # token ids, as they are or in a list of one
        req = parse_completion({"prompt": form}, max_tokens_limit=LIMIT)
        assert req.tokens == (1, 2, 3) and req.prompt == ""
    for bad in (None, 5, ["a", "b"], [[1], [2]], [], [[]], [1, -2], [1, True], [[1, "a"]]):
        assert refused(parse_completion, {"prompt": bad},
                       max_tokens_limit=LIMIT).param == "prompt"
    assert refused(parse_completion, {}, max_tokens_limit=LIMIT).param == "prompt"
    assert refused(parse_completion, {"prompt": "a", "max_tokens": -5},
                   max_tokens_limit=LIMIT).param == "max_tokens"


def test_embeddings_input_forms():
    assert parse_embeddings({"input": "a"}).inputs == ("a",)
    req = parse_embeddings({"input": ["a", "b"], "encoding_format": "base64"})
    assert req.inputs == ("a", "b") and req.encoding_format == "base64"
    for bad in ([], [1, 2], None, [""], {"a": 1}):
        assert refused(parse_embeddings, {"input": bad}).param == "input"
    assert refused(parse_embeddings, {}).param == "input"
    assert refused(parse_embeddings, {"input": "a", "encoding_format": "hex"}).param == \
        "encoding_format"


@pytest.mark.parametrize("role", [[], {}, ["user"], 1, None])
def test_a_role_of_any_json_type_is_a_400(role):
    # An unhashable role used to reach `role in ROLES` and answer 500 (found by the fuzz).
    assert refused(parse_chat, {"messages": [{"role": role, "content": "x"}]},
                   max_tokens_limit=LIMIT).param == "messages[0].role"
