"""Bad input is a 4xx with OpenAI's envelope and `param`, never a 500: the bodies that
used to answer 500 `internal_error`, over the real server with the real model."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import httpx
import pytest

from tests.http_server import API_KEY, Server, running_server, server, settings_for  # noqa: F401

http = httpx.Client(timeout=300)
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def model(server: Server) -> str:
    return http.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"]


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


def chat(server: Server, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2, **fields}
    return http.post(f"{server.url}/v1/chat/completions", headers=AUTH, json=body)


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.mark.parametrize("schema, says", [
    ({"$ref": "#/definitions/missing"}, "missing"),
    ({"type": "object", "properties": {"a": {"$ref": "#/nope/a"}}}, "nope"),
    ({"$ref": "https://169.254.169.254/schema.json"}, "local $ref"),
    ({"$ref": "other.json"}, "local $ref"),
    ({"type": "string", "pattern": "[a-z"}, "json_schema"),
    ({"type": "string", "pattern": "^)$"}, "json_schema"),
    ({"type": "string", "pattern": "^(?P<x>a)$"}, "json_schema"),
    ({"type": "string", "pattern": "^a{2,1}[$"}, "json_schema"),
    ({"type": "string", "maxLength": 100_000_000}, "maxLength"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 10**9}, "minItems"),
    ({"type": "string", "pattern": "^a{0,99999999}$"}, "repetition"),
])
def test_schemas_the_converter_cannot_take_are_400(server: Server, model: str,
                                                   schema: dict, says: str) -> None:
    error = error_of(chat(server, model, response_format=schema_format(schema)))
    assert error["param"] == "response_format.json_schema"
    assert says in error["message"]


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that takes 1 MiB bodies and loads no model: JSON is refused before any."""
    registry = tmp_path_factory.mktemp("empty-registry")
    settings = dataclasses.replace(settings_for("unused"), model=None,
                                   registry=str(registry), max_body=1 << 20)
    with running_server(settings) as srv:
        yield srv


def test_deep_nesting_is_400(roomy: Server) -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000,
                b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                b'{"a": ' + b'{"a": ' * 200 + b"1" + b"}" * 201):
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            error = error_of(http.post(f"{roomy.url}{path}", headers=AUTH, content=raw))
            assert "nested" in error["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_numbers_are_400(server: Server, model: str, literal: str) -> None:
    for field in ("temperature", "top_p", "max_tokens", "seed", "frequency_penalty"):
        raw = (f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hi"}}],'
               f' "{field}": {literal}}}').encode()
        error = error_of(http.post(f"{server.url}/v1/chat/completions", headers=AUTH,
                                   content=raw))
        assert "got number" not in error["message"]
        assert literal.lstrip("-") in error["message"]


def test_integers_too_long_to_convert_are_400(server: Server, model: str) -> None:
    raw = b'{"max_tokens": ' + b"9" * 5000 + b', "prompt": "x"}'
    error_of(http.post(f"{server.url}/v1/completions", headers=AUTH, content=raw))


def test_the_server_still_serves_afterwards(server: Server, model: str) -> None:
    response = chat(server, model, max_tokens=1,
                    response_format=schema_format({"type": "object", "properties": {
                        "a": {"type": "string", "pattern": "^[a-z]{1,3}$"}}}))
    assert response.status_code == 200, response.text
