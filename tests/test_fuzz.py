"""Generated bodies at every route of one real server: no 5xx, and it keeps serving.

Hypothesis draws request bodies shaped like the OpenAI API's (every field, with values
of every JSON type, out-of-range numbers, NaN and Infinity spelled in the raw body,
odd schemas in `response_format`, odd model references) plus raw bytes. The budget is
fixed and the run derandomized, so a failure reproduces. Generation stays cheap: a body
that could start a real generation always carries `max_tokens` <= 2.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http_server import API_KEY, Server, server  # noqa: F401 (fixture)

http = httpx.Client(timeout=300)
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def budget(examples: int) -> settings:
    """A fixed number of examples, the same ones on every run (derandomized)."""
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                        max_leaves=8)


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON value at all."""
    return st.one_of(values, values, values, any_json)


# max_tokens: a valid value is 1 or 2; anything else must be refused before generating.
max_tokens = st.one_of(st.sampled_from([1, 2]), st.sampled_from([1, 2]),
                       st.sampled_from([0, -1, 3.5, "2", True, 10**30, math.nan]))
numbers = st.floats(-5, 5) | st.integers(-5, 5)
schema_leaf = st.fixed_dictionaries({"type": st.sampled_from(
    ["string", "integer", "number", "boolean", "null", "object", "array", "bogus"])},
    optional={"pattern": st.sampled_from(["^[a-z]+$", "^(a|b", "[", "^a{2}$", "^\\d{1,3}$",
                                          "^a{3,1}$", "(?P<x>a)", "^.*$", "^$"]),
              "enum": st.lists(scalars, max_size=3), "minLength": maybe(st.integers(0, 3)),
              "maxLength": maybe(st.integers(0, 3)), "$ref": st.sampled_from(
                  ["#/definitions/a", "#/$defs/x", "#", "http://h/x.json", "#/properties"]),
              "format": st.sampled_from(["date", "uuid", "email", "time"])})
schemas = st.recursive(schema_leaf, lambda inner: st.fixed_dictionaries(
    {"type": st.sampled_from(["object", "array"])},
    optional={"properties": st.dictionaries(st.text(max_size=4), inner, max_size=3),
              "items": inner, "required": st.lists(st.text(max_size=4), max_size=2),
              "anyOf": st.lists(inner, max_size=2), "$defs": st.dictionaries(
                  st.sampled_from(["x", "y"]), inner, max_size=2),
              "additionalProperties": st.booleans() | inner}), max_leaves=5)
response_formats = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "nope"])}),
    st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": maybe(
        st.fixed_dictionaries({"name": st.text(max_size=4), "schema": maybe(schemas)}))}))
contents = maybe(st.text(max_size=20) | st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url"]), "text": maybe(st.text(max_size=8))}),
    max_size=2))
messages = st.lists(maybe(st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["system", "user", "assistant", "tool", "robot"])),
     "content": contents}, optional={"name": any_json})), max_size=3)
sampling = {"temperature": maybe(numbers), "top_p": maybe(numbers), "top_k": maybe(numbers),
            "min_p": maybe(numbers), "seed": maybe(st.integers(-2**64, 2**64)),
            "presence_penalty": maybe(numbers), "frequency_penalty": maybe(numbers),
            "repeat_penalty": maybe(numbers), "stop": maybe(st.lists(st.text(max_size=3),
                                                                     max_size=5)),
            "stream": maybe(st.booleans()), "stream_options": maybe(
                st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
            "n": maybe(st.integers(0, 2)), "logprobs": any_json, "best_of": any_json,
            "user": any_json, "logit_bias": any_json, "tools": any_json,
            "tool_choice": any_json, "response_format": maybe(response_formats)}


def models(real: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(real), st.just(real), st.none(), any_json, st.sampled_from(
        ["../../etc/passwd", "/etc/shadow", "file:///etc/hostname", "s3://b/k.gguf",
         "http://169.254.169.254/x", "a\x00b", "nobody:1", f"x@blake3:{'0' * 64}", ""]))


def bodies(real: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    chat = st.fixed_dictionaries({"model": models(real), "messages": messages,
                                  "max_tokens": max_tokens},
                                 optional={**sampling, "max_completion_tokens": max_tokens})
    completion = st.fixed_dictionaries({"model": models(real), "max_tokens": max_tokens,
                                        "prompt": maybe(st.text(max_size=20))},
                                       optional={**sampling, "echo": maybe(st.booleans()),
                                                 "suffix": any_json})
    embedding = st.fixed_dictionaries({"model": models(real), "input": maybe(
        st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3))},
        optional={"encoding_format": maybe(st.sampled_from(["float", "base64"])),
                  "dimensions": any_json})
    return st.one_of(st.tuples(st.just("/v1/chat/completions"), chat),
                     st.tuples(st.just("/v1/completions"), completion),
                     st.tuples(st.just("/v1/embeddings"), embedding))


def encode(body: Any) -> bytes:
    """Python's encoder writes NaN and Infinity as bare words: exactly the raw bodies
    a sloppy client sends."""
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def model(server: Server) -> str:
    return http.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"]


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


def alive(server: Server, model: str) -> None:
    response = http.post(f"{server.url}/v1/completions", headers=AUTH,
                         json={"model": model, "prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200, response.text


def test_generated_bodies_never_get_a_5xx(server: Server, model: str) -> None:
    @budget(1000)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        path, body = data.draw(bodies(model))
        check(http.post(f"{server.url}{path}", headers=AUTH, content=encode(body)))

    run()
    alive(server, model)


def test_raw_bytes_and_any_json_never_get_a_5xx(server: Server, model: str) -> None:
    paths = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                             "/v1/responses", "/tokenize", "/detokenize"])

    @budget(700)
    @given(paths, st.binary(max_size=64) | any_json.map(encode))
    def run(path: str, raw: bytes) -> None:
        check(http.post(f"{server.url}{path}", headers=AUTH, content=raw))

    run()
    alive(server, model)


def test_every_other_route_never_gets_a_5xx(server: Server, model: str) -> None:
    refs = st.one_of(st.text(max_size=20), models(model).filter(lambda m: isinstance(m, str)))

    @budget(300)
    @given(refs, st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
           st.sampled_from(["/v1/models", "/v1/cache", "/health", "/ready", "/metrics",
                            "/v1/models/{}/load", "/v1/responses/{}", "/v1/{}", "/{}"]))
    def run(ref: str, method: str, template: str) -> None:
        from urllib.parse import quote

        url = f"{server.url}{template.format(quote(ref, safe=''))}"
        check(http.request(method, url, headers=AUTH))

    run()
    alive(server, model)
