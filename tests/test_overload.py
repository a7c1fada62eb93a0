"""Overload: 20x STRATO_MAX_QUEUE simultaneous requests get only 200s and 429s (with
Retry-After), the waiting line never grows past its bound, and the server serves
again at once afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.http_server import API_KEY, Server, ready_server, settings_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUEUE = 8


@pytest.fixture(scope="module")
def small_queue(gemma_path: Path) -> Iterator[Server]:
    with ready_server(settings_for(gemma_path, parallel=2, max_queue=QUEUE, ctx=512)) as srv:
        yield srv


def test_twenty_times_the_queue_gets_only_200_and_429(small_queue: Server) -> None:
    server = small_queue
    model = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"]
    engine = asyncio.run_coroutine_threadsafe(server.service.engine(model),
                                              server.loop).result(60)
    scheduler = getattr(engine, "_engine", engine).scheduler
    deepest = 0

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        nonlocal deepest
        deepest = max(deepest, scheduler.queue_depth())
        body = {"model": model, "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "user", "content": f"Say {i}."}]}
        return await client.post("/v1/chat/completions", json=body)

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=20 * QUEUE, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=600,
                                     limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(20 * QUEUE)))

    responses = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
        else:
            assert r.json()["usage"]["completion_tokens"] <= 2
    assert deepest <= QUEUE
    # Served again at once: the very next request is admitted, not refused.
    again = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=300,
                       json={"model": model, "max_tokens": 1,
                             "messages": [{"role": "user", "content": "Hi"}]})
    assert again.status_code == 200, again.text
    assert scheduler.queue_depth() == 0
