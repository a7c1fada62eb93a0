"""Tool calls, reasoning, refusal and /tokenize end to end: real uvicorn, the official
`openai` client, and two real models: Gemma 3 270M (no chat template: strato's Gemma
turns with the generic tool format) and SmolLM2-135M-Instruct as it ships (its ChatML
template knows no tools: generic format), as a copy with a Hermes (Qwen 2.5) template
(the template's own tool format) and as a copy whose template opens a <think> block.

Forced calls (`required`, named) must parse and validate on every one of them; answers
are checked against OpenAI's published schemas (tests/openapi_check.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import jsonschema
import openai
import pytest

from tests import smollm2
from tests.chat_templates import HERMES, THINK
from tests.http_server import (  # noqa: F401 (server, client, model: shared fixtures)
    API_KEY,
    Server,
    client,
    make_service,
    model,
    ready_server,
    server,
    settings_for,
)
from tests.openapi_check import check
from tests.polling import wait_until

PARAMS = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
          "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Tokyo"]},
                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city", "parameters": PARAMS}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "required": ["zone"],
                   "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def models(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    smol = smollm2.ensure()
    work = tmp_path_factory.mktemp("templates")
    return {"gemma": str(gemma_path), "smollm2": str(smol),
            "hermes": str(smollm2.with_chat_template(smol, work / "hermes.gguf", HERMES)),
            "think": str(smollm2.with_chat_template(smol, work / "think.gguf", THINK))}


@pytest.fixture(scope="module")
def smol_server(models: dict[str, str]) -> Iterator[Server]:
    """SmolLM2 and its copies (the Hermes copy by default); Gemma is the shared server's
    (tests/http_server.py), so the suite loads it once."""
    # The operator allows the directories of the SmolLM2 copies: requests name them by path.
    allowed = tuple(sorted({str(Path(path).parent) for path in models.values()}))
    with ready_server(settings_for(models["hermes"], parallel=2,
                                   allowed_sources=allowed)) as srv:
        yield srv


class Models:
    """Where each test model is served, and the `model` to ask for (None: the default)."""

    def __init__(self, gemma: Server, smol: Server, paths: dict[str, str]) -> None:
        self.gemma, self.smol, self.paths = gemma, smol, paths

    def server(self, name: str) -> Server:
        return self.gemma if name == "gemma" else self.smol

    def body(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return body if name == "gemma" else {**body, "model": self.paths[name]}

    def post(self, name: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.server(name).url}{path}", json=self.body(name, body),
                          timeout=300, headers={"Authorization": f"Bearer {API_KEY}"})

    def client(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server(name).url}/v1", api_key=API_KEY,
                             max_retries=0, timeout=300)

    def chunks(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """A streamed chat answer's chunks, each checked against OpenAI's schema."""
        with httpx.stream("POST", f"{self.server(name).url}/v1/chat/completions",
                          json=self.body(name, {**body, "stream": True}), timeout=300,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        return [check(json.loads(line[6:]), "CreateChatCompletionStreamResponse")
                for line in lines[:-1]]


@pytest.fixture(scope="module")
def at(server: Server, smol_server: Server,  # noqa: F811 (the shared server fixture)
       models: dict[str, str]) -> Models:
    return Models(server, smol_server, models)


def assert_valid_calls(calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> None:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert calls
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["function"]["arguments"]),
                            schemas[call["function"]["name"]])


# --- forced calls ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma", "smollm2", "hermes"])
@pytest.mark.parametrize("choice", ["required", NAMED])
def test_forced_call_parses_and_validates(at: Models, name: str, choice: Any) -> None:
    tools = [CLOCK, WEATHER]
    r = at.post(name, "/v1/chat/completions", {
        "messages": ASK, "tools": tools, "tool_choice": choice,
        "parallel_tool_calls": False, "temperature": 0, "max_tokens": 60})
    assert r.status_code == 200, r.text
    body = check(r.json(), "CreateChatCompletionResponse")
    choice_out = body["choices"][0]
    message = choice_out["message"]
    assert choice_out["finish_reason"] == "tool_calls"
    assert message["content"] is None and message["refusal"] is None
    assert len(message["tool_calls"]) == 1
    assert_valid_calls(message["tool_calls"], tools)
    if choice == NAMED:
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"


def test_parallel_forced_calls_all_parse(at: Models) -> None:
    r = at.post("hermes", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Weather in Paris and in Rome?"}],
        "tools": [WEATHER], "tool_choice": "required", "temperature": 0,
        "max_tokens": 400})
    body = check(r.json(), "CreateChatCompletionResponse")
    calls = body["choices"][0]["message"]["tool_calls"]
    assert 1 <= len(calls) <= 8 and body["choices"][0]["finish_reason"] == "tool_calls"
    assert_valid_calls(calls, [WEATHER])
    assert len({c["id"] for c in calls}) == len(calls)


@pytest.mark.parametrize("name", ["gemma", "hermes"])
def test_streamed_call_is_sent_as_openai_does(at: Models, name: str) -> None:
    request = {"messages": ASK, "tools": [WEATHER], "tool_choice": NAMED,
               "temperature": 0, "max_tokens": 60}
    whole = at.post(name, "/v1/chat/completions", request).json()["choices"][0]
    chunks = at.chunks(name, request)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and deltas[0]["refusal"] is None
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    head, pieces = calls[0], calls[1:]
    assert head == {"index": 0, "id": head["id"], "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}
    assert len(pieces) > 1 and all(p.keys() == {"index", "function"} and p["index"] == 0
                                   and p["function"].keys() == {"arguments"}
                                   for p in pieces)
    arguments = "".join(p["function"]["arguments"] for p in pieces)
    assert arguments == whole["message"]["tool_calls"][0]["function"]["arguments"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "tool_calls"
    assert not any(d.get("content") for d in deltas)


@pytest.mark.parametrize("name", ["hermes", "gemma"])
def test_round_trip_with_the_openai_client(at: Models, name: str) -> None:
    """Call, run the tool, send the result back: on the template's own tool format
    (hermes) and the generic one (gemma), streamed through the client's accumulator."""
    client, model = at.client(name), at.body(name, {}).get("model", "")
    messages: list[Any] = list(ASK)
    with client.chat.completions.stream(
            model=model, messages=messages, tools=[WEATHER], tool_choice=NAMED,
            temperature=0, max_tokens=60, stream_options={"include_usage": True}) as stream:
        first = stream.get_final_completion()
    message = first.choices[0].message
    call = message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert first.choices[0].finish_reason == "tool_calls" and args["city"] in \
        ("Paris", "Rome", "Tokyo")
    messages += [message, {"role": "tool", "tool_call_id": call.id,
                           "content": json.dumps({"temperature": 21, **args})}]
    second = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER], tool_choice="none",
        temperature=0, max_tokens=24)
    answer = second.choices[0]
    assert answer.message.tool_calls is None and answer.message.content
    assert answer.finish_reason in ("stop", "length")
    # the call and its result reached the prompt (`none` leaves the tool list out)
    alone = client.chat.completions.create(model=model, messages=ASK, max_tokens=1)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 20


def test_auto_answers_are_valid_either_way(at: Models) -> None:
    """`auto` lets the model choose; whichever it chose must be well formed."""
    r = at.post("hermes", "/v1/chat/completions", {
        "messages": ASK, "tools": [WEATHER], "temperature": 0, "max_tokens": 60})
    body = check(r.json(), "CreateChatCompletionResponse")
    choice = body["choices"][0]
    if choice["message"].get("tool_calls"):
        assert choice["finish_reason"] == "tool_calls"
        assert all(c["function"]["name"] == "get_weather"
                   for c in choice["message"]["tool_calls"])
    else:
        assert isinstance(choice["message"]["content"], str)


# --- refusals of bad input ------------------------------------------------------------------


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "bogus"}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/$defs/Nowhere"}}}}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function",
                                          "function": {"name": "launch"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_invalid_tools_are_400s(at: Models, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        at.client("hermes").chat.completions.create(
            model=at.paths["hermes"], messages=ASK, max_tokens=4, **extra)
    assert info.value.body["param"] == param


def test_template_type_error_is_a_400_naming_the_template(at: Models) -> None:
    # SmolLM2's own template does '...' + message['content']: null content is a TypeError.
    with pytest.raises(openai.BadRequestError) as info:
        at.client("smollm2").chat.completions.create(
            model=at.paths["smollm2"], max_tokens=4, messages=[
                *ASK, {"role": "assistant", "content": None},
                {"role": "user", "content": "?"}])
    assert "tokenizer.chat_template" in info.value.body["message"]
    assert "TypeError" in info.value.body["message"]
    assert info.value.body["param"] == "messages"


# --- reasoning, refusal ----------------------------------------------------------------------


def test_reasoning_content_is_split_out(at: Models) -> None:
    request = {"messages": [{"role": "user", "content": "2+2?"}], "temperature": 0,
               "max_tokens": 12}
    body = check(at.post("think", "/v1/chat/completions", request).json(),
                 "CreateChatCompletionResponse")
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] and "<think>" not in message["reasoning_content"]
    chunks = at.chunks("think", request)
    streamed = "".join(c["choices"][0]["delta"].get("reasoning_content", "")
                       for c in chunks if c["choices"])
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == message["reasoning_content"]
    assert content == (message["content"] or "")


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_plain_answers_carry_refusal_null(at: Models, name: str) -> None:
    body = at.post(name, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "temperature": 0}).json()
    message = check(body, "CreateChatCompletionResponse")["choices"][0]["message"]
    assert message["refusal"] is None and "tool_calls" not in message
    assert "reasoning_content" not in message


# --- tokenize ------------------------------------------------------------------------------


def test_tokenize_and_detokenize_round_trip(at: Models) -> None:
    text = "Hello world, <b>é</b>"
    ids = {}
    for name in ("gemma", "smollm2"):
        tokens = at.post(name, "/tokenize", {"content": text}).json()["tokens"]
        ids[name] = tokens
        assert at.post(name, "/detokenize", {"tokens": tokens}).json() == {"content": text}
        pieces = at.post(name, "/tokenize", {"content": text, "with_pieces": True}
                         ).json()["tokens"]
        assert [p["id"] for p in pieces] == tokens
        assert "".join(p["piece"] for p in pieces) == text
    # `model` chose the vocabulary: SmolLM2 asked for by path on the Hermes-default server
    assert ids["gemma"] != ids["smollm2"]
    special = at.post("gemma", "/tokenize", {"content": text, "add_special": True}
                      ).json()["tokens"]
    assert special[1:] == ids["gemma"] and len(special) == len(ids["gemma"]) + 1


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"content": 5}, "content"),
    ("/tokenize", {"content": "x", "with_pieces": "yes"}, "with_pieces"),
    ("/detokenize", {"tokens": ["a"]}, "tokens"),
    ("/detokenize", {"tokens": [1, 10 ** 9]}, "tokens[1]"),
    ("/detokenize", {"tokens": [-1]}, "tokens[0]"),
])
def test_tokenize_refuses_bad_input(at: Models, path: str, body: dict[str, Any],
                                    param: str) -> None:
    r = at.post("smollm2", path, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


# --- through the Lambda handler -----------------------------------------------------------


def test_tools_and_tokenize_through_the_lambda_handler(models: dict[str, str],
                                                       tmp_path: Path) -> None:
    """The same app as Lambda runs it (`python -m awslambdaric`, tests/lambda_runtime.py):
    a forced call and /tokenize from HTTP API v2 events, on SmolLM2's own template."""
    import base64

    from tests.lambda_runtime import Function, RuntimeApi, lambda_env

    def event(path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.loads((Path(__file__).parent.parent / "events" / "http-v2-chat.json")
                          .read_text())
        data["rawPath"] = data["requestContext"]["http"]["path"] = path
        data["body"] = base64.b64encode(json.dumps(body).encode()).decode()
        data["isBase64Encoded"] = True
        return data

    api = RuntimeApi()
    function = Function(api, lambda_env(api, extra={
        "STRATO_MODEL": models["smollm2"], "STRATO_CTX": "512", "STRATO_PARALLEL": "1",
        "STRATO_THREADS": "2", "STRATO_TIERS": f"ram:1GiB,disk:{tmp_path / 'tiers'}:2GiB"}))
    try:
        function.start()
        answers = [function.invoke(event("/v1/chat/completions", {
                       "messages": ASK, "tools": [WEATHER], "tool_choice": NAMED,
                       "temperature": 0, "max_tokens": 60})),
                   function.invoke(event("/tokenize", {"content": "Hello"}))]
    finally:
        function.kill()
        api.close()
    bodies = []
    for got in answers:
        assert got.ok and got.body["statusCode"] == 200, got.body
        raw = got.body["body"]
        bodies.append(json.loads(base64.b64decode(raw) if got.body.get("isBase64Encoded")
                                 else raw))
    message = check(bodies[0], "CreateChatCompletionResponse")["choices"][0]["message"]
    assert_valid_calls(message["tool_calls"], [WEATHER])
    assert bodies[1]["tokens"] and all(isinstance(t, int) for t in bodies[1]["tokens"])


# --- the CLI ------------------------------------------------------------------------------


def test_strato_run_renders_the_models_own_template(at: Models, tmp_path: Path) -> None:
    """`strato run` on SmolLM2 (its own ChatML template, not a fallback) answers what
    the HTTP API answers for the same greedy request."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "STRATO_CTX": "1024", "STRATO_PARALLEL": "1",
           "STRATO_THREADS": "2", "STRATO_TIERS": f"ram:1GiB,disk:{tmp_path}:2GiB"}
    cli = subprocess.run([sys.executable, "-m", "handlers.cli", "run", at.paths["smollm2"],
                          "Name a colour.", "--max-tokens", "6", "--temperature", "0"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    # A server of its own, cold like the CLI's engine: a prefix cached by other tests
    # would be reused from KV cells computed in other batch shapes, and llama.cpp's
    # arithmetic is not batch-invariant (a greedy near-tie may flip).
    settings = settings_for(at.paths["smollm2"], parallel=1, threads=2)
    fresh = Server(settings, make_service(settings))
    try:
        assert wait_until(lambda: httpx.get(f"{fresh.url}/ready", timeout=30).status_code
                          == 200, 300)
        http = httpx.post(f"{fresh.url}/v1/chat/completions", timeout=300,
                          headers={"Authorization": f"Bearer {API_KEY}"}, json={
                              "messages": [{"role": "user", "content": "Name a colour."}],
                              "max_tokens": 6, "temperature": 0}
                          ).json()["choices"][0]["message"]["content"]
    finally:
        fresh.stop()
    assert cli.stdout.strip() == http.strip() != ""


# --- tools with response_format --------------------------------------------------------

COLOUR = {"type": "object", "additionalProperties": False, "required": ["colour"],
          "properties": {"colour": {"type": "string", "maxLength": 16}}}


@pytest.mark.parametrize("choice,ask", [
    (NAMED, ASK), ("auto", [{"role": "user", "content": "Name a colour, as JSON."}])])
def test_response_format_shapes_the_text_a_forced_call_has_none(
        client: openai.OpenAI, model: str, choice: Any,  # noqa: F811 (shared fixtures)
        ask: list[dict[str, str]]) -> None:
    """response_format with tools (README, "Tool calls"): a forced call wins (it has no
    text to shape); with `auto` the answer is a valid call or text in the format, never
    anything else, streamed or not (Gemma chooses the call: before tools met the format
    in one grammar, the format's grammar made calls impossible)."""
    args = dict(model=model, messages=ask, tools=[WEATHER], tool_choice=choice,
                parallel_tool_calls=False,
                temperature=0, max_tokens=60, response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "colour", "schema": COLOUR, "strict": True}})
    body = check(client.chat.completions.with_raw_response.create(**args)
                 .http_response.json(), "CreateChatCompletionResponse")
    message = body["choices"][0]["message"]
    if choice == NAMED or message.get("tool_calls"):
        assert message["content"] is None
        assert_valid_calls(message["tool_calls"], [WEATHER])
    else:
        jsonschema.validate(json.loads(message["content"]), COLOUR)
    streamed = list(client.chat.completions.create(**args, stream=True))
    calls = [c for chunk in streamed for c in chunk.choices[0].delta.tool_calls or []]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed)
    assert bool(calls) == bool(message.get("tool_calls"))
    assert text == (message["content"] or "")
