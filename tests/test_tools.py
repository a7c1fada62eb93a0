"""Tool calling without a model: request parsing, prompts (a tools-aware template and the
generic format), the forced-call grammar, and the output parser's streamed and whole
answers agreeing. The real models' end of it is in tests/test_tool_calls.py."""

from __future__ import annotations

import json

import pytest

from core.engine import chat_template as chat
from core.errors import BadRequest
from core.openai import schemas, tools
from core.openai.responses import ChunkWriter
from core.openai.tool_output import OutputParser, collect, prompt_opens_think
from tests.chat_templates import HERMES, THINK

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
]


def parse(**body):
    return schemas.parse_chat({"messages": HISTORY[:1], **body}, max_tokens_limit=64)


# --- requests ------------------------------------------------------------------------


def test_tool_spec_parsing() -> None:
    assert parse().tools is None
    spec = parse(tools=[WEATHER]).tools
    assert spec.choice == "auto" and spec.parallel and not spec.forced
    assert spec.tools[0].name == "get_weather" and spec.names() == {"get_weather"}
    named = parse(tools=[WEATHER], tool_choice={"type": "function",
                                                "function": {"name": "get_weather"}},
                  parallel_tool_calls=False).tools
    assert named.choice == "get_weather" and named.forced and not named.parallel
    assert not parse(tools=[WEATHER], tool_choice="none").tools.active


@pytest.mark.parametrize("body, param", [
    ({"tools": {"x": 1}}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "bogus"}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}}}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_tools_are_400s_naming_the_field(body, param) -> None:
    with pytest.raises(BadRequest) as info:
        parse(**body)
    assert info.value.param == param and info.value.status == 400


@pytest.mark.parametrize("message, param", [
    ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
     "messages[0].tool_calls[0]"),
])
def test_bad_tool_history_is_a_400(message, param) -> None:
    with pytest.raises(BadRequest) as info:
        schemas.parse_messages([message])
    assert info.value.param == param


def test_parsed_messages_parse_to_themselves() -> None:
    once = schemas.parse_messages(HISTORY)
    assert schemas.parse_messages(once) == once
    assert once[1]["content"] is None and once[2]["tool_call_id"] == "call_1"


# --- prompts -------------------------------------------------------------------------


def test_tools_aware_template_gets_tools_and_history() -> None:
    spec = parse(tools=[WEATHER]).tools
    out = chat.render(HISTORY, template=HERMES, architecture="llama", tools=spec.tools)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in out
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|im_end|>') in out
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response>" in out
    assert out.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("architecture", ["gemma3", "llama"])
def test_generic_format_for_templates_without_tools(architecture) -> None:
    spec = parse(tools=[WEATHER]).tools
    out = chat.render(HISTORY, template=None, architecture=architecture, tools=spec.tools)
    assert out.count("<tools>\n") == 1 and '"name": "get_weather"' in out
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' \
           '</tool_call>' in out
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in out
    assert "tool_call_id" not in out


def test_template_errors_of_any_kind_are_400s_naming_the_template() -> None:
    concat = "{% for m in messages %}{{ 'x' + m['content'] }}{% endfor %}"
    with pytest.raises(BadRequest, match=r"chat template \(tokenizer.chat_template\).*"
                                         r"TypeError") as info:
        chat.render([{"role": "assistant", "content": None}], template=concat,
                    architecture="llama")
    assert info.value.param == "messages"
    with pytest.raises(BadRequest, match="tokenizer.chat_template"):
        chat.render([{"role": "user", "content": "x"}], template="{{ 1 // 0 }}",
                    architecture="llama")


def test_tojson_is_hugging_faces() -> None:
    out = chat.render([{"role": "user", "content": "x"}], architecture="llama",
                      template="{{ {'b': '<x>', 'a': 1} | tojson }}")
    assert out == '{"b": "<x>", "a": 1}'


# --- grammar -------------------------------------------------------------------------


def test_forced_call_grammar_names_only_callable_tools() -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"$ref": "#/$defs/Zone"}},
        "$defs": {"Zone": {"type": "string", "enum": ["UTC", "CET"]}}}}}
    required = tools.forced_call(parse(tools=[WEATHER, other], tool_choice="required").tools)
    assert required.prefix == '<tool_call>\n{"name": '
    assert required.grammar.startswith(
        'root ::= first-call ("\\n" tool-call){0,7}\nfirst-call ::= ("\\"get_weather\\", '
        '\\"arguments\\": " tool-0-arguments | "\\"get_time\\", \\"arguments\\": " '
        'tool-1-arguments) "}\\n</tool_call>"\n')
    assert 'tool-1-Zone ::= "\\"UTC\\"" | "\\"CET\\""' in required.grammar  # own $defs
    named = tools.forced_call(parse(
        tools=[WEATHER, other], tool_choice={"type": "function",
                                             "function": {"name": "get_time"}}).tools)
    assert named.prefix == '<tool_call>\n{"name": "get_time", "arguments": '
    assert named.grammar.startswith(
        'root ::= first-call\nfirst-call ::= tool-0-arguments "}\\n</tool_call>"\n')
    assert "get_weather" not in named.grammar
    assert tools.forced_call(parse(tools=[WEATHER]).tools) is None  # auto: unconstrained


def test_a_prefilled_call_parses_as_if_the_model_wrote_it() -> None:
    clock = {"type": "function", "function": {"name": "get_time"}}
    for choice, rest in [("required", '"get_weather", "arguments": {"city": "Paris"}}\n'
                                      '</tool_call>'),
                         ({"type": "function", "function": {"name": "get_weather"}},
                          '{"city": "Paris"}}\n</tool_call>')]:
        spec = parse(tools=[WEATHER, clock], tool_choice=choice).tools
        forced = tools.forced_call(spec)
        parser = OutputParser(spec.names(), prefix=forced.prefix, call_id=lambda: "call_x")
        out = collect([d for c in rest for d in parser.feed(c)] + parser.finish())
        assert out.content is None and out.tool_calls == [{
            "id": "call_x", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


def test_same_named_defs_of_two_tools_stay_apart() -> None:
    def tool(name, zones):
        return {"type": "function", "function": {"name": name, "parameters": {
            "type": "object", "properties": {"z": {"$ref": "#/definitions/Z"}},
            "definitions": {"Z": {"enum": zones}}}}}
    gbnf = tools.forced_call(parse(tools=[tool("f", ["UTC"]), tool("g", ["CET"])],
                                   tool_choice="required").tools).grammar
    assert 'tool-0-Z ::= "\\"UTC\\""' in gbnf and 'tool-1-Z ::= "\\"CET\\""' in gbnf


def test_forced_call_grammar_loads_in_llama_cpp() -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        forced = tools.forced_call(parse(tools=[WEATHER], tool_choice=choice).tools)
        LlamaGrammar.from_string(forced.grammar, verbose=False)


# --- output --------------------------------------------------------------------------

NAMES = frozenset({"get_weather"})
TWO_CALLS = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
             '{"city": "Pa\\"ris", "days": [1, {"a": 2}]}}\n</tool_call>\n<tool_call>\n'
             '{"arguments": {"city": "Rome"}, "name": "get_weather"}\n</tool_call>\n')


def run(text: str, names=NAMES, step: int = 1, **kw):
    parser = OutputParser(names, call_id=lambda: "call_x", **kw)
    deltas = [d for i in range(0, len(text), step) for d in parser.feed(text[i:i + step])]
    return deltas + parser.finish()


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_streamed_pieces_give_the_whole_answer(step) -> None:
    out = collect(run(TWO_CALLS, step=step))
    assert out.content == "Let me check.\n" and out.reasoning is None
    assert [c["function"]["name"] for c in out.tool_calls] == ["get_weather"] * 2
    assert json.loads(out.tool_calls[0]["function"]["arguments"]) == \
        {"city": 'Pa"ris', "days": [1, {"a": 2}]}
    assert json.loads(out.tool_calls[1]["function"]["arguments"]) == {"city": "Rome"}
    assert collect(run(TWO_CALLS, step=step)) == collect(run(TWO_CALLS, step=1000))


def test_a_call_streams_name_first_then_argument_pieces() -> None:
    deltas = [d for d in run(TWO_CALLS, step=3) if d.kind != "content"]
    assert deltas[0].kind == "call" and deltas[0].name == "get_weather"
    first_args = [d for d in deltas if d.kind == "arguments" and d.index == 0]
    assert len(first_args) > 5  # in pieces as written, not one blob at the end
    chunks = [json.loads(ChunkWriter("chat", "c", 1, "m").delta(d)[6:]) for d in deltas[:2]]
    assert chunks[0]["choices"][0]["delta"] == {"tool_calls": [{
        "index": 0, "id": "call_x", "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}]}
    assert chunks[1]["choices"][0]["delta"] == {"tool_calls": [{
        "index": 0, "function": {"arguments": first_args[0].text}}]}


@pytest.mark.parametrize("text, content", [
    ("<tool_call>{not json}</tool_call> ok", "<tool_call>{not json}</tool_call> ok"),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
     '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),
    ("a < b and <tool", "a < b and <tool"),
])
def test_what_is_not_a_call_stays_content(text, content) -> None:
    for step in (1, 1000):
        out = collect(run(text, step=step))
        assert out.content == content and out.tool_calls == []


def test_without_tools_tags_are_content() -> None:
    assert collect(run(TWO_CALLS, names=None)).content == TWO_CALLS


def test_reasoning_is_split_out() -> None:
    for step in (1, 4, 1000):
        out = collect(run("<think>\nhmm, 2+2\n</think>\n\nIt is 4.", None, step))
        assert (out.reasoning, out.content) == ("\nhmm, 2+2\n", "It is 4.")
        opened = collect(run("hmm</think> Four.", None, step, in_think=True))
        assert (opened.reasoning, opened.content) == ("hmm", "Four.")
    assert collect(run("No thinking <think>here</think>", None)).reasoning is None
    prompt = chat.render([{"role": "user", "content": "x"}], template=THINK,
                         architecture="llama")
    assert prompt_opens_think(prompt) and not prompt_opens_think("<think>x</think>")


def test_a_call_cut_by_the_length_limit_keeps_its_start() -> None:
    out = collect(run('<tool_call>\n{"name": "get_weather", "arguments": {"ci'))
    assert out.content is None and out.tool_calls[0]["function"]["arguments"] == '{"ci'
