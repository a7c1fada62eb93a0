"""A real uvicorn server on a free port, serving the real model, for the HTTP tests.

The server runs in a thread of the test process, so tests can also look at the engine's
scheduler (to prove a disconnected stream was freed) and at core.metrics. The model
service is the real one, core.serving.manager.ModelManager.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

from core.config import Settings
from core.serving.manager import ModelManager
from handlers.http import serve_app
from tests.polling import wait_until

API_KEY = "test-key-123"


def make_service(settings: Settings) -> ModelManager:
    """The production model service: references, tiers, loader, engines."""
    return ModelManager(settings)


class Server:
    """uvicorn in a thread; `url` is ready when the constructor returns."""

    def __init__(self, settings: Settings, service: Any) -> None:
        import uvicorn

        self.settings, self.service = settings, service
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(serve_app(settings, service), log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()  # where the service's engines live
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self.server.serve(sockets=[self.sock]),),
                                       daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive())
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def settings_for(model: str | Path, **overrides: Any) -> Settings:
    # Small context and few slots: two CPU cores are shared with the rest of the suite.
    # Tiers in a private temporary directory: tests never touch the user's cache.
    cache = tempfile.mkdtemp(prefix="strato-http-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    tiers = f"ram:1GiB,disk:{cache}:2GiB"
    base = Settings(model=str(model), ctx=1024, parallel=4, max_queue=16,
                    max_body=64 << 10, max_tokens_limit=2048, api_key=API_KEY, threads=2,
                    tiers=tiers)
    return dataclasses.replace(base, **overrides)


@contextlib.contextmanager
def running_server(settings: Settings) -> Iterator[Server]:
    """A real server on `settings`, stopped on exit; not waited for (servers with no
    model, a broken one, or one that must still be loading)."""
    srv = Server(settings, make_service(settings))
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def ready_server(settings: Settings) -> Iterator[Server]:
    """A real server on `settings`, yielded once its default model answers /ready."""
    import httpx

    with running_server(settings) as srv:
        assert wait_until(lambda: httpx.get(f"{srv.url}/ready", timeout=30).status_code == 200,
                          300), "the default model never became ready"
        yield srv


@pytest.fixture(scope="session")
def server(gemma_path: Path) -> Iterator[Server]:
    """The shared server: the real Gemma model, an API key, a 64 KiB body limit."""
    with ready_server(settings_for(gemma_path)) as srv:
        yield srv


# A prompt the model continues for as long as it is allowed to: no early EOS, so
# "finished with the full max_tokens" is a property of the server, not of luck.
COUNTING = "Count from 1 to 500, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8,"


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    """The official client on the shared server (no retries: every status is the server's)."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    """The id the shared server lists for its model."""
    return client.models.list().data[0].id
