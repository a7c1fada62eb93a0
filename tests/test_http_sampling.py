"""logprobs, n, logit_bias and seed through the HTTP API: real uvicorn, real Gemma, the
official `openai` client, bodies checked against OpenAI's published schemas."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.http_server import API_KEY, COUNTING, Server, client, model, server  # noqa: F401 (fixture)
from tests.openapi_check import check


def engine(server: Server, model: str):
    """The LlamaEngine behind the server (ModelManager hands out a counting wrapper)."""
    found = asyncio.run_coroutine_threadsafe(server.service.engine(model),
                                             server.loop).result(60)
    return getattr(found, "_engine", found)


def test_chat_logprobs_streamed_and_not(client: openai.OpenAI, model: str) -> None:
    args = dict(model=model, messages=[{"role": "user", "content": "Name three colours."}],
                max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    raw = client.chat.completions.with_raw_response.create(**args).http_response.json()
    check(raw, "CreateChatCompletionResponse")
    content = raw["choices"][0]["logprobs"]["content"]
    assert len(content) == raw["usage"]["completion_tokens"]
    for entry in content:
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and entry["logprob"] <= 0
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops),
                                                      reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert tops[0]["token"] == entry["token"]
        assert tops[0]["logprob"] == pytest.approx(entry["logprob"])
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    assert "".join(e["token"] for e in content) == raw["choices"][0]["message"]["content"]

    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = [lp for c in chunks if c.choices and c.choices[0].logprobs
                for lp in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e["token"] for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e["logprob"] for e in content],
                                                          abs=1e-3)


def test_logprobs_off_by_default(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.create(model=model, max_tokens=2,
                                         messages=[{"role": "user", "content": "Hi"}])
    assert out.choices[0].logprobs is None


def test_completion_logprobs_and_prompt_scoring(client: openai.OpenAI, model: str) -> None:
    gen = client.completions.with_raw_response.create(
        model=model, prompt=COUNTING, max_tokens=3, temperature=0, logprobs=2
    ).http_response.json()
    check(gen, "CreateCompletionResponse")
    lp = gen["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 3 and "".join(lp["tokens"]) == gen["choices"][0]["text"]
    assert all(len(t) == 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0

    # What lm-eval's loglikelihood sends: echo, logprobs, max_tokens 0. The prompt is
    # the one above plus its own greedy answer, so scoring the answer's tokens must
    # give the logprobs generation reported for them.
    scored = client.completions.with_raw_response.create(
        model=model, prompt=COUNTING + gen["choices"][0]["text"], max_tokens=0, echo=True,
        logprobs=1, temperature=0).http_response.json()
    choice = scored["choices"][0]
    assert choice["text"] == COUNTING + gen["choices"][0]["text"]
    assert choice["finish_reason"] == "length"
    assert scored["usage"]["completion_tokens"] == 0
    echo = choice["logprobs"]
    assert "".join(echo["tokens"]) == choice["text"]
    assert echo["token_logprobs"][0] is not None  # Gemma's BOS gives the first a context
    assert all(x <= 0 for x in echo["token_logprobs"])
    assert echo["text_offset"] == [sum(len(t) for t in echo["tokens"][:i])
                                   for i in range(len(echo["tokens"]))]
    assert echo["tokens"][-3:] == lp["tokens"]
    assert echo["token_logprobs"][-3:] == pytest.approx(lp["token_logprobs"], abs=2e-2)

    # A sensible continuation is likelier than a nonsense one.
    def total(text: str) -> float:
        body = client.completions.create(model=model, prompt=text, max_tokens=0, echo=True,
                                         logprobs=0)
        return sum(body.choices[0].logprobs.token_logprobs[-1:])
    assert total("The capital of France is Paris") > total("The capital of France is banana")


def test_echo_stream_carries_the_prompt_logprobs(client: openai.OpenAI, model: str) -> None:
    chunks = list(client.completions.create(model=model, prompt="One, two, three,",
                                            max_tokens=2, echo=True, logprobs=1,
                                            temperature=0, stream=True))
    first = chunks[0].choices[0]
    assert first.text == "One, two, three,"
    assert "".join(first.logprobs.tokens) == first.text
    rest = [t for c in chunks[1:] if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert len(rest) == 2


def test_n_choices_streamed_and_not(client: openai.OpenAI, server: Server, model: str) -> None:
    args = dict(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                max_tokens=8, temperature=1.0, seed=7, n=3)
    raw = client.chat.completions.with_raw_response.create(**args).http_response.json()
    check(raw, "CreateChatCompletionResponse")
    assert [c["index"] for c in raw["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in raw["choices"]]
    assert len(set(texts)) > 1  # each answer draws from its own seed
    assert 3 <= raw["usage"]["completion_tokens"] <= 24  # the three answers' tokens
    again = client.chat.completions.create(**args)
    assert [c.message.content for c in again.choices] == texts  # seeded: reproducible

    chunks = list(client.chat.completions.create(**args, stream=True,
                                                 stream_options={"include_usage": True}))
    by_index: dict[int, str] = {0: "", 1: "", 2: ""}
    finishes = []
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.index)
    assert sorted(finishes) == [0, 1, 2]
    assert [by_index[i] for i in range(3)] == texts
    assert chunks[-1].usage.completion_tokens == raw["usage"]["completion_tokens"]
    text = client.completions.create(model=model, prompt=COUNTING, max_tokens=4, n=2,
                                     temperature=0)
    assert [c.index for c in text.choices] == [0, 1]
    assert text.choices[0].text == text.choices[1].text  # greedy: the same answer twice


def test_n_above_parallel_is_refused_naming_the_limit(server: Server, model: str) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": model, "n": 5, "messages": [{"role": "user",
                                                                "content": "hi"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "n" and "STRATO_PARALLEL" in err["message"] and "4" in err["message"]


def test_logit_bias_bans_and_forces(client: openai.OpenAI, server: Server,
                                    model: str) -> None:
    tokenize = engine(server, model).tokenize
    plain = client.completions.create(model=model, prompt=COUNTING, max_tokens=1,
                                      temperature=0)
    [greedy] = tokenize(plain.choices[0].text, add_bos=False)
    banned = client.completions.create(model=model, prompt=COUNTING, max_tokens=1,
                                       temperature=0, logit_bias={str(greedy): -100})
    assert banned.choices[0].text != plain.choices[0].text
    [seven] = tokenize(" seven", add_bos=False)
    forced = client.completions.create(model=model, prompt=COUNTING, max_tokens=3,
                                       temperature=0, logit_bias={str(seven): 100})
    assert forced.choices[0].text == " seven" * 3
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="x", max_tokens=1,
                                  logit_bias={"99999999": 1})
    assert info.value.body["param"] == "logit_bias"


def test_seed_repeats_alone_and_after_prefix_cache_hits(client: openai.OpenAI,
                                                        server: Server, model: str) -> None:
    sched = engine(server, model).scheduler
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    hits = []

    def observe(report) -> None:
        hits.extend(a.reuse for a in report.plan.admit)

    sched.subscribe(observe)
    try:
        outs = [client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                               temperature=1.0, seed=99) for _ in range(3)]
    finally:
        sched.unsubscribe(observe)
    # The first read its prompt (past the chat template's opening, which other tests
    # left in the cache); the later two found all of it but the last token cached.
    prompt = outs[0].usage.prompt_tokens
    assert len(hits) == 3 and hits[0] < prompt - 1 and hits[1] == hits[2] == prompt - 1
    texts = [o.choices[0].message.content for o in outs]
    assert texts[0] == texts[1] == texts[2]


def test_n_answers_each_get_their_own_tool_call(client: openai.OpenAI, model: str) -> None:
    weather = {"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "required": ["city"], "additionalProperties": False,
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}}}}
    args = dict(model=model, n=2, max_tokens=40, temperature=1.0, seed=5, tools=[weather],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                messages=[{"role": "user", "content": "Weather in Paris?"}])
    raw = client.chat.completions.with_raw_response.create(**args).http_response.json()
    check(raw, "CreateChatCompletionResponse")
    assert [c["finish_reason"] for c in raw["choices"]] == ["tool_calls", "tool_calls"]
    for choice in raw["choices"]:
        [call] = choice["message"]["tool_calls"]
        assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Rome")
    chunks = list(client.chat.completions.create(**args, stream=True))
    named = {c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.tool_calls
             and c.choices[0].delta.tool_calls[0].function.name}
    assert named == {0, 1}  # each answer streams its own call


def test_token_array_prompts(client: openai.OpenAI, server: Server, model: str) -> None:
    """A prompt of token ids (as /tokenize gives them, BOS included) is the same prompt
    as its text, as it is or in a list of one; echo shows it as text, BOS left out."""
    ids = httpx.post(f"{server.url}/tokenize", json={"content": COUNTING, "add_special": True},
                     headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
                     ).json()["tokens"]
    text = client.completions.create(model=model, prompt=COUNTING, max_tokens=4,
                                     temperature=0, logprobs=1, echo=True)
    for form in (ids, [ids]):
        out = client.completions.with_raw_response.create(
            model=model, prompt=form, max_tokens=4, temperature=0, logprobs=1, echo=True
        ).http_response.json()
        check(out, "CreateCompletionResponse")
        assert out["choices"][0]["text"] == text.choices[0].text
        assert out["usage"]["prompt_tokens"] == text.usage.prompt_tokens == len(ids)
        assert out["choices"][0]["logprobs"]["tokens"] == text.choices[0].logprobs.tokens
    for bad in ([[1], [2]], [10**9], []):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=model, prompt=bad, max_tokens=1)
        assert info.value.body["param"] == "prompt"
