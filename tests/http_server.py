"""A real uvicorn server on a free port, serving the real model, for the HTTP tests.

The server runs in a thread of the test process, so tests can also look at the engine's
scheduler (to prove a disconnected stream was freed) and at core.metrics. The model
service is core.models.ModelManager when it exists; until then `SingleModel` serves one
LlamaEngine, which is also useful to test the app against the bare service contract.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from core.config import Settings
from core.errors import ModelNotFound, ModelUnavailable
from core.generation import Engine, ModelInfo
from handlers.http import serve_app

API_KEY = "test-key-123"


class SingleModel:
    """ModelService over one engine, loaded on first use (the contract, nothing more)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_model = settings.model
        self._engine: Engine | None = None
        self._error: BaseException | None = None
        self._lock = asyncio.Lock()

    async def engine(self, model: str | None) -> Engine:
        if model not in (None, self.default_model) and not (
                self._engine and model == self._engine.info.name):
            raise ModelNotFound(f"model {model!r} is not served here", param="model")
        async with self._lock:
            if self._engine is None:
                from core.engine import LlamaEngine

                path = str(self.default_model)
                try:
                    self._engine = await asyncio.to_thread(
                        LlamaEngine.load, path, name=Path(path).name, settings=self.settings)
                except Exception as exc:
                    raise ModelUnavailable(f"model failed to load: {exc}") from exc
        return self._engine

    def models(self) -> list[ModelInfo]:
        return [self._engine.info] if self._engine else []

    def ready(self) -> bool:
        return self._engine is not None

    async def prefetch(self, model: str) -> None:
        asyncio.get_running_loop().create_task(self.engine(model))

    def cache_report(self) -> dict[str, Any]:
        return {"tiers": [], "models": [m.name for m in self.models()]}

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def make_service(settings: Settings) -> Any:
    try:
        from core.models import ModelManager
    except ImportError:
        return SingleModel(settings)
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
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def settings_for(model: str | Path, **overrides: Any) -> Settings:
    # Small context and few slots: two CPU cores are shared with the rest of the suite.
    base = Settings(model=str(model), ctx=1024, parallel=4, max_queue=16,
                    max_body=64 << 10, max_tokens_limit=2048, api_key=API_KEY, threads=2)
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def server(gemma_path: Path) -> Iterator[Server]:
    """The shared server: the real Gemma model, an API key, a 64 KiB body limit."""
    settings = settings_for(gemma_path)
    srv = Server(settings, make_service(settings))
    try:
        import httpx

        assert wait_until(lambda: httpx.get(f"{srv.url}/ready", timeout=30).status_code == 200,
                          300), \
            "the default model never became ready"
        yield srv
    finally:
        srv.stop()


def wait_until(predicate: Any, timeout: float = 60.0) -> bool:
    """Poll a condition (not a timing claim: the deadline only bounds a hung test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
