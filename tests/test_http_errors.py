"""Every error the API promises, by status and OpenAI envelope, over a real server.

After each one the same server must still answer a real completion: an error never
leaves a half-admitted sequence, a stuck lock or a dead event loop behind.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.http_server import (  # noqa: F401
    API_KEY,
    Server,
    ready_server,
    running_server,
    server,
    settings_for,
    wait_until,
)

# One client with a patient timeout: two shared cores make a 5 s default flaky.
http = httpx.Client(timeout=300)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def model(server: Server) -> str:
    return http.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"]


def envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the status and OpenAI's error shape; return the inner error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def still_serving(server: Server, model: str) -> None:
    r = http.post(f"{server.url}/v1/chat/completions", headers=AUTH,
                   json={**CHAT, "model": model, "max_tokens": 1})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1


def post(server: Server, path: str = "/v1/chat/completions", **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", AUTH)
    return http.post(f"{server.url}{path}", **kwargs)


# --- 400 ------------------------------------------------------------------------------


def test_malformed_json(server: Server, model: str) -> None:
    err = envelope(post(server, content=b'{"messages": [', headers={
        **AUTH, "content-type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]
    still_serving(server, model)


@pytest.mark.parametrize("body,param", [
    ({"model": "m"}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "max_tokens": -1}, "max_tokens"),
    ({**CHAT, "max_tokens": 10**9}, "max_tokens"),
    ({**CHAT, "max_tokens": "8"}, "max_tokens"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "n": 99}, "n"),  # above STRATO_PARALLEL
    ({**CHAT, "stop": 5}, "stop"),
    ({**CHAT, "messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
])
def test_bad_chat_bodies(server: Server, model: str, body: dict, param: str) -> None:
    err = envelope(post(server, json={"model": model, **body}), 400)
    assert err["param"] == param
    still_serving(server, model)


def test_missing_prompt_and_bad_embeddings_input(server: Server, model: str) -> None:
    assert envelope(post(server, "/v1/completions", json={"model": model}), 400)[
        "param"] == "prompt"
    assert envelope(post(server, "/v1/embeddings", json={"model": model, "input": [1]}),
                    400)["param"] == "input"
    still_serving(server, model)


def test_prompt_longer_than_context(server: Server, model: str) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    long = "word " * 3000  # the test server's context is 1024 tokens
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, max_tokens=4,
                                       messages=[{"role": "user", "content": long}])
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:  # streamed: refused before a 200
        client.completions.create(model=model, prompt=long, max_tokens=4, stream=True)
    assert info.value.param == "prompt"
    still_serving(server, model)


def test_openai_client_sees_param(server: Server, model: str) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user",
                                                               "content": "x"}], n=99)
    assert info.value.param == "n" and info.value.status_code == 400


# --- 401, 404, 405, 413 -----------------------------------------------------------------


def test_bad_or_missing_key(server: Server, model: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        err = envelope(http.get(f"{server.url}/v1/models", headers=headers), 401)
        assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=model, messages=CHAT["messages"])
    assert http.get(f"{server.url}/health").status_code == 200  # probes stay open
    still_serving(server, model)


def test_unknown_model(server: Server, model: str) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nobody:1", messages=CHAT["messages"])
    assert info.value.code == "model_not_found"
    still_serving(server, model)


def test_unknown_route_and_method(server: Server, model: str) -> None:
    assert envelope(http.get(f"{server.url}/v2/nothing", headers=AUTH), 404)
    assert envelope(http.get(f"{server.url}/v1/chat/completions", headers=AUTH), 405)


def test_body_too_large(server: Server, model: str) -> None:
    big = {**CHAT, "model": model, "pad": "x" * (server.settings.max_body + 1)}
    err = envelope(post(server, json=big), 413)
    assert err["code"] == "payload_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the streamed count applies
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(server.settings.max_body // 1024 + 2):
            yield b"y" * 1024
        yield b'"}]}'

    assert envelope(post(server, content=chunked(), headers={
        **AUTH, "content-type": "application/json"}), 413)["code"] == "payload_too_large"
    still_serving(server, model)


# --- 429 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_server(gemma_path: Path) -> Iterator[Server]:
    """One sequence slot and room for one waiting request: easy to fill."""
    with ready_server(settings_for(gemma_path, parallel=1, max_queue=1, ctx=512)) as srv:
        yield srv


def test_queue_full_answers_429_with_retry_after(busy_server: Server) -> None:
    """1 slot and max_queue=1: of 6 simultaneous streams some are refused with 429 and
    Retry-After; the admitted ones finish normally, and the server keeps serving."""
    server = busy_server
    body = {**CHAT, "max_tokens": 16, "stream": True}

    async def one(client: httpx.AsyncClient) -> tuple[int, str | None, str]:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            text = (await r.aread()).decode()
            return r.status_code, r.headers.get("retry-after"), text

    async def main() -> list[tuple[int, str | None, str]]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH,
                                     timeout=300) as client:
            return await asyncio.gather(*(one(client) for _ in range(6)))

    results = asyncio.run(main())
    refused = [r for r in results if r[0] == 429]
    served = [r for r in results if r[0] == 200]
    assert refused and served and len(refused) + len(served) == 6, \
        [r[0] for r in results]
    for _, retry_after, text in refused:
        assert retry_after is not None and int(retry_after) >= 1
        assert json.loads(text)["error"]["code"] == "queue_full"
    for _, _, text in served:
        assert text.rstrip().endswith("data: [DONE]")
    model = http.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"]
    still_serving(server, model)


def test_disconnect_while_queued_never_runs(busy_server: Server) -> None:
    """A request that leaves while waiting for a slot is dropped from the queue at the
    next step: the running stream keeps going, and the queued one never produces."""
    server = busy_server
    model = http.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"]
    engine = asyncio.run_coroutine_threadsafe(server.service.engine(model),
                                              server.loop).result(60)
    scheduler = getattr(engine, "_engine", engine).scheduler
    # A prompt the model keeps continuing (no early end of text), greedy.
    long = {"model": model, "max_tokens": 120, "stream": True, "temperature": 0,
            "prompt": "Count from 1 to 500, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8,"}
    with http.stream("POST", f"{server.url}/v1/completions", json=long,
                     headers=AUTH) as running:
        lines = running.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        payload = json.dumps({**CHAT, "model": model, "max_tokens": 50}).encode()
        queued = socket.create_connection(("127.0.0.1", server.port))
        queued.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                       b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                       b"Content-Type: application/json\r\nContent-Length: "
                       + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        assert wait_until(lambda: scheduler.queue_depth() == 1)
        queued.close()
        assert wait_until(lambda: scheduler.queue_depth() == 0)
        assert scheduler.running() == 1  # the first stream was never disturbed
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    still_serving(server, model)


# --- 503 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose default model is a corrupt GGUF: it never becomes ready."""
    path: Path = tmp_path_factory.mktemp("broken") / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 4096)
    settings = settings_for(path, api_key=None)
    with running_server(settings) as srv:
        yield srv


def test_model_that_fails_to_load_is_503(broken_server: Server) -> None:
    err = envelope(http.get(f"{broken_server.url}/ready"), 503)
    assert err["type"] == "server_error"
    r = http.post(f"{broken_server.url}/v1/chat/completions", json=CHAT, timeout=120)
    err = envelope(r, 503)
    assert err["type"] == "server_error"
    assert http.get(f"{broken_server.url}/health").status_code == 200
    assert envelope(http.get(f"{broken_server.url}/ready"), 503)


@pytest.fixture(scope="module")
def impatient_server(gemma_path: Path) -> Iterator[Server]:
    """Waits at most 1 ms for a model load, so any request for a cold model is a 503.
    Requests may name files under the temporary directory (STRATO_ALLOWED_SOURCES)."""
    settings = settings_for(gemma_path, api_key=None, load_timeout=0.001, ctx=512,
                            allowed_sources=(str(Path(tempfile.gettempdir()).resolve()),))
    with running_server(settings) as srv:
        yield srv


def test_model_still_loading_is_503_with_retry_after(impatient_server: Server,
                                                      gemma_path: Path,
                                                      tmp_path: Path) -> None:
    other = tmp_path / "second-name.gguf"  # same bytes under a reference not loaded yet
    other.symlink_to(gemma_path)
    body = {**CHAT, "model": str(other)}
    r = http.post(f"{impatient_server.url}/v1/chat/completions", json=body)
    err = envelope(r, 503)
    assert err["code"] == "model_unavailable" and int(r.headers["retry-after"]) >= 1
    # The load goes on in the background; once it is in, the same request is served.
    assert wait_until(lambda: http.post(f"{impatient_server.url}/v1/chat/completions",
                                        json=body).status_code == 200, timeout=300)
