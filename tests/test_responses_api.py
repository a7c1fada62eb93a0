"""/v1/responses end to end: real uvicorn, real Gemma, the official `openai` client, and
every body and event checked against OpenAI's published schemas."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.http_server import API_KEY, COUNTING, Server, client, model, server  # noqa: F401 (fixture)
from tests.openapi_check import EVENT_SCHEMAS, check

PARAMS = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
          "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Tokyo"]},
                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
        "parameters": PARAMS, "strict": True}
ASK = "What is the weather like in Paris today?"


def create_raw(client: openai.OpenAI, **kwargs: object) -> dict:
    """A non-streamed create through the official client; its raw body, schema-checked."""
    raw = client.responses.with_raw_response.create(**kwargs)
    body = raw.http_response.json()
    check(body, "Response")
    return body


def raw_events(server: Server, body: dict) -> list[dict]:
    """A streamed create read off the wire, each event checked against its schema."""
    with httpx.stream("POST", f"{server.url}/v1/responses", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    events = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert names == [e["type"] for e in events]  # every event line names its data's type
    for event in events:
        check(event, EVENT_SCHEMAS[event["type"]])
    return events


def test_create_not_streamed(client: openai.OpenAI, model: str) -> None:
    body = create_raw(client, model=model, input="Name three colours.",
                      instructions="Answer briefly.", max_output_tokens=12, temperature=0)
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] in ("completed", "incomplete")
    assert body["instructions"] == "Answer briefly." and body["max_output_tokens"] == 12
    [item] = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["content"][0]["type"] == "output_text" and item["content"][0]["text"]
    usage = body["usage"]
    assert 0 < usage["output_tokens"] <= 12 and usage["input_tokens"] > 5
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_streamed_events_match_the_response(client: openai.OpenAI, server: Server,
                                            model: str) -> None:
    args = {"model": model, "input": "Name three colours.", "max_output_tokens": 12,
            "temperature": 0}
    whole = client.responses.create(**args)
    events = list(client.responses.create(**args, stream=True))
    kinds = [e.type for e in events]
    end = f"response.{whole.status}"
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 0
    assert kinds == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added"] \
        + ["response.output_text.delta"] * deltas \
        + ["response.output_text.done", "response.content_part.done",
           "response.output_item.done", end]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text  # greedy: the same tokens either way
    assert events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {events[-1].response.output[0].id}
    # The same stream off the wire, every event against OpenAI's schema.
    wire = raw_events(server, args)
    assert [e["type"] for e in wire] == kinds
    assert wire[-1]["response"]["output"][0]["content"][0]["text"] == text


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI,
                                                         model: str) -> None:
    first = client.responses.create(model=model, input="My name is Ada. Say hello.",
                                    instructions="Be brief.", max_output_tokens=10,
                                    temperature=0)
    chained = client.responses.create(model=model, input="What is my name?",
                                      previous_response_id=first.id, max_output_tokens=10,
                                      temperature=0)
    assert chained.previous_response_id == first.id
    # The same conversation spelled out (instructions are not carried over, as in
    # OpenAI's API) gives the same prompt and, greedily, the same answer.
    spelled = client.responses.create(model=model, max_output_tokens=10, temperature=0,
                                      input=[{"role": "user",
                                              "content": "My name is Ada. Say hello."},
                                             {"role": "assistant", "content": [
                                                 {"type": "output_text",
                                                  "text": first.output_text}]},
                                             {"role": "user", "content": "What is my name?"}])
    assert chained.usage.input_tokens == spelled.usage.input_tokens
    assert chained.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert chained.output_text == spelled.output_text


def test_get_and_delete_by_id(client: openai.OpenAI, model: str) -> None:
    made = create_raw(client, model=model, input="Say hi.", max_output_tokens=4,
                      temperature=0)
    got = client.responses.with_raw_response.retrieve(made["id"]).http_response.json()
    assert got == made
    assert client.responses.retrieve(made["id"]).output_text == \
        made["output"][0]["content"][0]["text"]
    client.responses.delete(made["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made["id"])
    unstored = client.responses.create(model=model, input="Say hi.", max_output_tokens=4,
                                       store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=model, input="Hi", previous_response_id="resp_nope")
    assert info.value.body["param"] == "previous_response_id"


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI, server: Server,
                                               model: str) -> None:
    body = create_raw(client, model=model, input=COUNTING, max_output_tokens=4,
                      temperature=0)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 4
    events = raw_events(server, {"model": model, "input": COUNTING,
                                 "max_output_tokens": 4, "temperature": 0})
    assert events[-1]["type"] == "response.incomplete"


def test_text_format_json_schema(client: openai.OpenAI, model: str) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["colour"],
              "properties": {"colour": {"type": "string", "maxLength": 16}}}
    out = client.responses.create(
        model=model, input="Name a colour, as JSON.", max_output_tokens=40, temperature=0,
        text={"format": {"type": "json_schema", "name": "colour", "schema": schema,
                         "strict": True}})
    assert out.status == "completed"
    jsonschema.validate(json.loads(out.output_text), schema)
    assert out.text.format.type == "json_schema"


@pytest.mark.parametrize("body,param", [
    ({"input": []}, "input"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
    ({"input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools[0].name"),  # chat's nested shape is not the Responses API's
    ({"input": "hi", "tools": [{"type": "function", "name": "f",
                                "parameters": {"type": "object", "required": "x"}}]},
     "tools[0].parameters"),
    ({"input": "hi", "tools": [TOOL], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice"),
    ({"input": [{"role": "user", "content": [{"type": "input_image",
                                              "image_url": "x"}]}]}, "input[0].content[0]"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
     "text.format.schema"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "temperature": "hot"}, "temperature"),
])
def test_bad_requests_are_400_with_param(server: Server, model: str, body: dict,
                                         param: str) -> None:
    r = httpx.post(f"{server.url}/v1/responses", json={"model": model, **body},
                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_logprobs_through_include(client: openai.OpenAI, model: str) -> None:
    args = dict(model=model, input="Name a colour.", max_output_tokens=4, temperature=0,
                include=["message.output_text.logprobs"], top_logprobs=2)
    body = create_raw(client, **args)
    part = body["output"][0]["content"][0]
    assert len(part["logprobs"]) == body["usage"]["output_tokens"]
    assert "".join(lp["token"] for lp in part["logprobs"]) == part["text"]
    assert all(len(lp["top_logprobs"]) == 2 for lp in part["logprobs"])
    streamed = [lp for e in client.responses.create(**args, stream=True)
                if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert [lp.token for lp in streamed] == [lp["token"] for lp in part["logprobs"]]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
def test_forced_function_call(client: openai.OpenAI, server: Server, model: str,
                              choice: object) -> None:
    """A forced call is grammar-constrained (Gemma knows no tools): one function_call
    item whose arguments validate, the same streamed (events checked off the wire)."""
    args = {"model": model, "input": ASK, "tools": [TOOL], "tool_choice": choice,
            "parallel_tool_calls": False, "max_output_tokens": 40, "temperature": 0}
    body = create_raw(client, **args)
    assert body["status"] == "completed" and body["tool_choice"] == choice
    assert body["tools"] == [TOOL] and body["parallel_tool_calls"] is False
    [call] = body["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert call["status"] == "completed" and call["call_id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), PARAMS)
    events = raw_events(server, args)
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.function_call_arguments.delta")
    assert deltas > 0
    assert kinds == ["response.created", "response.in_progress",
                     "response.output_item.added"] \
        + ["response.function_call_arguments.delta"] * deltas \
        + ["response.function_call_arguments.done", "response.output_item.done",
           "response.completed"]
    added, done = events[2]["item"], events[-2]["item"]
    assert added["type"] == "function_call" and added["arguments"] == ""
    assert "".join(e["delta"] for e in events[3:3 + deltas]) == call["arguments"] \
        == events[-3]["arguments"] == done["arguments"]  # greedy: the same call
    assert done["id"] == added["id"] and done["status"] == "completed"
    # Through the client's own stream accumulator.
    streamed = list(client.responses.create(**args, stream=True))
    final = streamed[-1].response
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == call["arguments"]


def test_function_call_round_trip(client: openai.OpenAI, model: str) -> None:
    """The call's result goes back as a function_call_output item, by
    previous_response_id or with the call spelled out in `input`: the same prompt."""
    first = client.responses.create(model=model, input=ASK, tools=[TOOL],
                                    tool_choice="required", parallel_tool_calls=False,
                                    max_output_tokens=40, temperature=0)
    [call] = first.output
    result = {"type": "function_call_output", "call_id": call.call_id,
              "output": json.dumps({"temperature": 21, "unit": "celsius"})}
    chained = client.responses.create(model=model, previous_response_id=first.id,
                                      input=[result], tools=[TOOL], max_output_tokens=12,
                                      temperature=0)
    spelled = client.responses.create(
        model=model, tools=[TOOL], max_output_tokens=12, temperature=0,
        input=[{"role": "user", "content": ASK},
               {"type": "function_call", "call_id": call.call_id, "name": call.name,
                "arguments": call.arguments}, result])
    assert chained.status in ("completed", "incomplete")
    assert chained.usage.input_tokens == spelled.usage.input_tokens
    assert chained.usage.input_tokens > first.usage.input_tokens
    assert [o.type for o in chained.output] == [o.type for o in spelled.output]
    assert chained.output_text == spelled.output_text


def test_tool_choice_none_and_auto_answer_in_the_response_shape(client: openai.OpenAI,
                                                                 model: str) -> None:
    for choice in ("none", "auto"):
        body = create_raw(client, model=model, input=ASK, tools=[TOOL], tool_choice=choice,
                          max_output_tokens=24, temperature=0)
        assert body["tool_choice"] == choice and body["output"]
        for item in body["output"]:  # text, a parsed call, or both
            if item["type"] == "function_call":
                assert choice == "auto" and item["name"] == "get_weather"
                if item["status"] == "completed":  # not cut by max_output_tokens
                    json.loads(item["arguments"])
            else:
                assert item["type"] == "message"


def test_forced_call_wins_over_text_format(client: openai.OpenAI, model: str) -> None:
    """text.format shapes a text answer; a forced call has none (README, "Tool calls")."""
    colour = {"type": "object", "required": ["colour"],
              "properties": {"colour": {"type": "string", "maxLength": 16}}}
    body = create_raw(client, model=model, input=ASK, tools=[TOOL],
                      tool_choice={"type": "function", "name": "get_weather"},
                      max_output_tokens=40, temperature=0,
                      text={"format": {"type": "json_schema", "name": "colour",
                                       "schema": colour}})
    [call] = body["output"]
    assert call["type"] == "function_call" and body["text"]["format"]["name"] == "colour"
    jsonschema.validate(json.loads(call["arguments"]), PARAMS)
