"""core.openai.responses_api without a model: parsing, the objects, the event sequence
(checked against OpenAI's published schemas) and the per-instance store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.engine.protocol import TokenEvent
from core.errors import BadRequest, NotFound
from core.openai.responses_api import Draft, ResponseStore, parse, response_object
from core.openai.responses_events import EventWriter
from core.openai.tool_output import OutputParser
from tests.openapi_check import EVENT_SCHEMAS, check

LIMIT = 4096
DONE = TokenEvent(text="", finish_reason="stop", prompt_tokens=9, completion_tokens=2)
CUT = TokenEvent(text="", finish_reason="length", prompt_tokens=9, completion_tokens=4)


def events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            body = json.loads(data[len("data: "):])
            assert name == f"event: {body['type']}"
            out.append(body)
    return out


def finished(draft: Draft, text: str, last: TokenEvent) -> dict:
    """The Response object of an answer that wrote `text`, as the silent writer makes it."""
    writer = EventWriter(draft, encode=False)
    writer.opening()
    writer.text(text)
    return writer.closing(last)[1]


def test_string_and_item_inputs_become_chat_messages():
    req = parse({"input": "Hi", "instructions": "Be brief."}, max_tokens_limit=LIMIT)
    assert req.messages() == ({"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Hi"})
    items = parse({"input": [
        {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                     {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "c"}]}]}, max_tokens_limit=LIMIT)
    assert items.messages() == ({"role": "user", "content": "a\nb"},
                                {"role": "assistant", "content": "c"})
    history = ({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"})
    assert items.messages(history)[:2] == history


def test_options_map_onto_the_chat_decoding():
    req = parse({"input": "Hi", "max_output_tokens": 20, "temperature": 0.2, "top_p": 0.5,
                 "stream": True, "text": {"format": {"type": "json_schema", "name": "x",
                                                     "schema": {"type": "object"}}}},
                max_tokens_limit=LIMIT)
    d = req.decoding
    assert (d.max_tokens, d.sampling.temperature, d.sampling.top_p, d.stream) == \
        (20, 0.2, 0.5, True)
    assert d.response_format is not None and d.response_format.schema == {"type": "object"}
    assert req.text_format["name"] == "x"


@pytest.mark.parametrize("body,param", [
    ({}, "input"),
    ({"input": 5}, "input"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
     "input[0].output"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": "x", "tools": [{"type": "function", "name": "a b"}]}, "tools[0].name"),
    ({"input": "x", "tools": [{"type": "function", "name": "f",
                               "parameters": {"type": "nope"}}]}, "tools[0].parameters"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "strict": "yes"}]},
     "tools[0].strict"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}],
      "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
    ({"input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": "x", "metadata": {"a": 1}}, "metadata"),
    ({"input": "x", "previous_response_id": 3}, "previous_response_id"),
])
def test_bad_bodies_name_their_param(body, param):
    with pytest.raises(BadRequest) as info:
        parse(body, max_tokens_limit=LIMIT)
    assert info.value.param == param


def test_objects_validate_against_openai_schemas():
    draft = Draft(parse({"input": "Hi", "metadata": {"k": "v"}}, max_tokens_limit=LIMIT),
                  "gemma")
    pending = response_object(draft)
    check(pending, "Response")
    assert pending["status"] == "in_progress" and pending["output"] == []
    done = finished(draft, "Hello!", DONE)
    check(done, "Response")
    assert done["output"][0]["content"][0]["text"] == "Hello!"
    assert done["usage"]["total_tokens"] == 11 and done["metadata"] == {"k": "v"}
    cut = finished(draft, "1, 2", CUT)
    check(cut, "Response")
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("last,final", [(DONE, "response.completed"),
                                        (CUT, "response.incomplete")])
def test_event_sequence_is_numbered_and_valid(last, final):
    draft = Draft(parse({"input": "Hi"}, max_tokens_limit=LIMIT), "gemma")
    writer = EventWriter(draft)
    raw = writer.opening() + writer.text('He said "hi"\n') + writer.text("!")
    tail, response = writer.closing(last)
    seen = events(raw + tail)
    assert [e["type"] for e in seen] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", final]
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    for event in seen:
        check(event, EVENT_SCHEMAS[event["type"]])
    assert seen[4]["delta"] == 'He said "hi"\n' and seen[-1]["response"] == response
    error = events(writer.error({"error": {"code": "x", "message": "boom", "param": None}}))
    check(error[0], "ResponseErrorEvent")
    assert error[0]["sequence_number"] == len(seen)


def test_store_is_bounded_and_chains_turns():
    store = ResponseStore(capacity=2)
    req = parse({"input": "one"}, max_tokens_limit=LIMIT)
    for n in range(3):
        store.put(req, finished(Draft(req, "m", id=f"r{n}"), f"answer {n}", DONE), ())
    with pytest.raises(NotFound):
        store.get("r0")  # the oldest went first
    assert store.history("r2") == ({"role": "user", "content": "one"},
                                   {"role": "assistant", "content": "answer 2"})
    with pytest.raises(NotFound) as info:
        store.history("nope")
    assert info.value.param == "previous_response_id"
    unstored = parse({"input": "x", "store": False}, max_tokens_limit=LIMIT)
    store.put(unstored, finished(Draft(unstored, "m", id="r9"), "y", DONE), ())
    with pytest.raises(NotFound):
        store.get("r9")
    store.delete("r2")
    with pytest.raises(NotFound):
        store.delete("r2")


def test_logprobs_are_asked_for_with_include():
    assert parse({"input": "x"}, max_tokens_limit=LIMIT).decoding.logprobs is None
    asked = parse({"input": "x", "include": ["message.output_text.logprobs"],
                   "top_logprobs": 2}, max_tokens_limit=LIMIT)
    assert asked.decoding.logprobs == 2
    for bad, param in (({"include": "x"}, "include"),
                       ({"include": ["message.output_text.logprobs"], "top_logprobs": 21},
                        "top_logprobs")):
        with pytest.raises(BadRequest) as info:
            parse({"input": "x", **bad}, max_tokens_limit=LIMIT)
        assert info.value.param == param


def test_logprobs_in_deltas_and_the_final_text_part():
    from core.engine.protocol import TokenLogprob

    hi = TokenLogprob("Hi", b"Hi", -0.1, (TokenLogprob("Hi", b"Hi", -0.1),))
    draft = Draft(parse({"input": "x", "include": ["message.output_text.logprobs"]},
                        max_tokens_limit=LIMIT), "gemma")
    writer = EventWriter(draft)
    writer.opening()
    *opened, delta = events(writer.text("Hi", [hi]))  # the message opens at its text
    assert [e["type"] for e in opened] == ["response.output_item.added",
                                           "response.content_part.added"]
    check(delta, "ResponseTextDeltaEvent")
    assert delta["logprobs"][0]["token"] == "Hi"
    tail, final = writer.closing(DONE)
    check(final, "Response")
    assert final["output"][0]["content"][0]["logprobs"] == [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
         "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}]
    for event in events(tail):
        check(event, EVENT_SCHEMAS[event["type"]])


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_function_tools_and_call_items_become_the_chat_request():
    req = parse({"input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "18 C"}]}],
        "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False}, max_tokens_limit=LIMIT)
    user, calls, one, two = req.messages()
    assert calls == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    assert (one, two) == ({"role": "tool", "content": "21 C", "tool_call_id": "call_1"},
                          {"role": "tool", "content": "18 C", "tool_call_id": "call_2"})
    assert req.tools is not None and req.tools.choice == "get_weather"
    assert [t.name for t in req.tools.tools] == ["get_weather"] and not req.tools.parallel
    pending = response_object(Draft(req, "gemma"))
    check(pending, "Response")
    assert pending["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert pending["tools"] == [{**WEATHER, "strict": True}]
    assert pending["parallel_tool_calls"] is False


def test_text_then_a_streamed_call_as_openai_sends_them():
    req = parse({"input": "Weather in Paris?", "tools": [WEATHER]}, max_tokens_limit=LIMIT)
    draft = Draft(req, "gemma")
    writer = EventWriter(draft, OutputParser(frozenset({"get_weather"}), reasoning=False))
    tokens = ["Let me check.", "\n<tool_", 'call>\n{"name": "get_weather", ',
              '"arguments": {"city": ', '"Paris"}}\n</tool_call>']
    raw = writer.opening() + b"".join(
        writer.tokens(TokenEvent(text=t)) for t in tokens[:-1])
    raw += writer.tokens(TokenEvent(text=tokens[-1], finish_reason="stop",
                                    prompt_tokens=9, completion_tokens=5))
    tail, final = writer.closing(DONE)
    seen = events(raw + tail)
    for event in seen:
        check(event, EVENT_SCHEMAS[event["type"]])
    kinds = [e["type"] for e in seen]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    at = kinds.index("response.output_item.done")  # the message closes before the call
    assert kinds[at + 1] == "response.output_item.added"
    added = seen[at + 1]
    assert added["item"]["type"] == "function_call" and added["output_index"] == 1
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    deltas = [e["delta"] for e in seen if e["type"] == "response.function_call_arguments.delta"]
    assert deltas and json.loads("".join(deltas)) == {"city": "Paris"}
    assert kinds[-3:] == ["response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"]
    check(final, "Response")
    message, call = final["output"]
    assert message["content"][0]["text"] == "Let me check.\n"  # as chat's content
    assert call["name"] == "get_weather" and call["status"] == "completed"
    assert call["call_id"].startswith("call_") and call["id"] == added["item"]["id"]
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    # The store chains on the call: the next turn sends its output back.
    store = ResponseStore()
    store.put(req, final, ())
    assert store.history(final["id"])[-1] == {
        "role": "assistant", "content": "Let me check.\n", "tool_calls": [
            {"id": call["call_id"], "type": "function",
             "function": {"name": "get_weather", "arguments": call["arguments"]}}]}


def test_any_body_parses_or_is_a_400():
    """Odd input items, tools and tool choices never escape parse as anything but a
    BadRequest (a 400 with `param`): what reaches the handler is well formed."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6)
    any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                            max_leaves=8)
    odd = scalars | any_json

    def item(kind: str) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries({"type": st.just(kind)}, optional={
            "role": st.sampled_from(["user", "assistant", "tool"]) | odd,
            "content": odd | st.lists(st.fixed_dictionaries(
                {"type": st.sampled_from(["input_text", "output_text"]) | odd,
                 "text": odd}), max_size=2),
            "call_id": odd, "name": st.sampled_from(["get_weather"]) | odd,
            "arguments": odd, "output": odd})

    items = st.sampled_from(["message", "function_call", "function_call_output",
                             "reasoning"]).flatmap(item) | odd
    tools_ = st.lists(st.fixed_dictionaries({"type": st.just("function") | odd}, optional={
        "name": st.just("get_weather") | odd, "description": odd, "strict": odd,
        "parameters": st.just(WEATHER["parameters"]) | odd}), max_size=2) | odd
    bodies = st.fixed_dictionaries({"input": st.lists(items, max_size=4) | odd}, optional={
        "tools": tools_, "parallel_tool_calls": odd,
        "tool_choice": st.sampled_from(["none", "auto", "required"])
        | st.fixed_dictionaries({"type": st.just("function"),
                                 "name": st.just("get_weather") | odd}) | odd})

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def run(body: dict) -> None:
        try:
            req = parse(body, max_tokens_limit=LIMIT)
        except BadRequest as exc:
            assert exc.param
            return
        check(response_object(Draft(req, "gemma")), "Response")

    run()
