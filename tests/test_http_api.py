"""The OpenAI API end to end: real uvicorn, real Gemma, the official `openai` client."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

from core import metrics
from tests.http_server import API_KEY, COUNTING, Server, client, model, server, wait_until  # noqa: F401 (fixture)

# One client with a patient timeout: two shared cores make a 5 s default flaky.
http = httpx.Client(timeout=300)


def test_models_lists_the_loaded_model(client: openai.OpenAI, model: str) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [model]
    card = models[0].model_dump()
    assert card["architecture"] == "gemma3" and card["context_length"] == 1024


def test_chat_streamed_equals_not_streamed(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                           temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion"

    chunks = list(client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert text == choice.message.content  # greedy: same tokens either way
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == \
        whole.usage.model_dump(exclude_none=True) | {"completion_tokens_details": None,
                                                      "prompt_tokens_details": None}
    assert len({c.id for c in chunks}) == 1


def test_stream_without_usage_option_sends_none(client: openai.OpenAI, model: str) -> None:
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason


def test_sse_wire_format_ends_with_done(server: Server, model: str) -> None:
    body = {"model": model, "prompt": COUNTING, "max_tokens": 5, "stream": True,
            "temperature": 0}
    with http.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(p["object"] == "text_completion" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_completions_streamed_and_not(client: openai.OpenAI, model: str) -> None:
    whole = client.completions.create(model=model, prompt=COUNTING, max_tokens=10,
                                      temperature=0)
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 10
    assert any(ch.isdigit() for ch in whole.choices[0].text)
    parts = list(client.completions.create(model=model, prompt=COUNTING, max_tokens=10,
                                           temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    echoed = client.completions.create(model=model, prompt=COUNTING, max_tokens=2,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(COUNTING)


def test_stop_sequence_is_not_in_the_output(client: openai.OpenAI, model: str) -> None:
    out = client.completions.create(model=model, prompt=COUNTING, max_tokens=40,
                                    temperature=0, stop=["17"])
    assert out.choices[0].finish_reason == "stop"
    assert "17" not in out.choices[0].text and "16" in out.choices[0].text


def test_seeded_sampling_is_reproducible(client: openai.OpenAI, model: str) -> None:
    def sample() -> str:
        return client.completions.create(model=model, prompt="Once upon a time",
                                         max_tokens=12, temperature=1.0,
                                         seed=1234, extra_body={"top_k": 50}
                                         ).choices[0].text
    assert sample() == sample()


def test_embeddings_string_and_list(client: openai.OpenAI, model: str) -> None:
    one = client.embeddings.create(model=model, input="The sky is blue.")
    assert len(one.data) == 1 and len(one.data[0].embedding) > 100
    many = client.embeddings.create(model=model, input=["The sky is blue.", "Cats purr."],
                                    encoding_format="float")
    assert [d.index for d in many.data] == [0, 1]
    assert many.usage.prompt_tokens > one.usage.prompt_tokens
    # base64 (the client's default) and float carry the same vector
    assert one.data[0].embedding == pytest.approx(many.data[0].embedding, abs=1e-6)
    assert many.data[0].embedding != pytest.approx(many.data[1].embedding, abs=1e-3)


def test_json_schema_output_parses_and_validates(client: openai.OpenAI, model: str) -> None:
    schema = {"type": "object", "additionalProperties": False,
              "required": ["city", "country", "population"],
              "properties": {"city": {"type": "string", "maxLength": 24},
                             "country": {"type": "string", "maxLength": 24},
                             "population": {"type": "integer", "minimum": 0}}}
    out = client.chat.completions.create(
        model=model, max_tokens=120, temperature=0,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": schema, "strict": True}})
    assert out.choices[0].finish_reason == "stop"  # the grammar closed the object
    data = json.loads(out.choices[0].message.content)
    jsonschema.validate(data, schema)
    loose = client.chat.completions.create(
        model=model, max_tokens=120, temperature=0,
        # json_object only promises an object; a 270M model closes it when shown how.
        messages=[{"role": "user", "content": "Give me a JSON object saying ok."},
                  {"role": "assistant", "content": '{"ok": true}'},
                  {"role": "user", "content": "Again, the same JSON object."}],
        response_format={"type": "json_object"})
    assert loose.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(loose.choices[0].message.content), dict)


def test_four_concurrent_streams_finish_with_full_max_tokens(server: Server,
                                                             model: str) -> None:
    async def one(client: openai.AsyncOpenAI, start: int) -> tuple[int, str | None, int]:
        numbers = ", ".join(str(n) for n in range(start, start + 6))
        stream = await client.completions.create(
            model=model, max_tokens=24, temperature=0, stream=True,
            stream_options={"include_usage": True}, prompt=f"Counting: {numbers},")
        pieces, finish, used = 0, None, -1
        async for chunk in stream:
            if chunk.choices:
                pieces += bool(chunk.choices[0].text)
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                used = chunk.usage.completion_tokens
        return pieces, finish, used

    async def main() -> list[tuple[int, str | None, int]]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY,
                                      max_retries=0) as client:
            return await asyncio.gather(*(one(client, s) for s in (1, 40, 300, 1200)))

    results = asyncio.run(main())
    for pieces, finish, used in results:
        assert (finish, used) == ("length", 24), results
        assert pieces > 0


def test_probes_metrics_and_admin_routes(server: Server, model: str) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert http.get(f"{server.url}/health").json() == {"status": "ok"}
    assert http.get(f"{server.url}/ready").status_code == 200
    text = http.get(f"{server.url}/metrics", headers=auth).text
    assert 'strato_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "strato_ttft_seconds_bucket" in text
    cache = http.get(f"{server.url}/v1/cache", headers=auth)
    assert cache.status_code == 200 and isinstance(cache.json(), dict)
    load = http.post(f"{server.url}/v1/models/{model}/load", headers=auth)
    assert load.status_code == 202 and load.json()["model"] == model


def test_disconnect_frees_the_sequence(server: Server, model: str) -> None:
    engine = asyncio.run_coroutine_threadsafe(server.service.engine(model),
                                              server.loop).result(60)
    # ModelManager hands out a wrapper that counts requests; the scheduler is inside.
    scheduler = getattr(engine, "_engine", engine).scheduler
    before = metrics.REGISTRY.get_sample_value("strato_tokens_out_total")
    body = {"model": model, "prompt": COUNTING, "max_tokens": 900, "stream": True}
    with http.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert next(line for line in r.iter_lines() if line.startswith("data: "))
        assert scheduler.running() == 1
    # The connection is closed: the sequence leaves the batch, far short of 900 tokens.
    assert wait_until(lambda: scheduler.running() == 0), scheduler.running()
    produced = metrics.REGISTRY.get_sample_value("strato_tokens_out_total") - before
    assert 0 < produced < 900
