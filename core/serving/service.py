"""The contract between handlers and model management.

Handlers never load models themselves: they ask a `ModelService` for the engine that
serves a request's `model` field. The service resolves the reference, loads the model
through the tiered loader when needed (requests wait meanwhile), and reports state for
`/v1/models`, `/ready` and `/v1/cache`.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.engine.protocol import Engine, ModelInfo


class ModelService(Protocol):
    default_model: str | None

    async def engine(self, model: str | None) -> Engine:
        """The loaded engine for `model` (None: the default), waiting while it loads.

        Raises InvalidReference (400), ModelNotFound (404), ModelUnavailable (503).
        """
        ...

    def models(self) -> list[ModelInfo]:
        """Models this server can answer for right now (loaded or header known)."""
        ...

    def ready(self) -> bool:
        """True once the default model (if any) is loaded."""
        ...

    async def prefetch(self, model: str) -> None:
        """Start loading `model` in the background (POST /v1/models/{ref}/load)."""
        ...

    def cache_report(self) -> dict[str, Any]:
        """Tiers, their models, sizes, hits and misses (GET /v1/cache, `strato cache`)."""
        ...

    async def finish_copies(self, timeout: float | None = None) -> None:
        """Wait for background copies into slower tiers (Lambda: before an invoke ends)."""
        ...

    async def close(self) -> None:
        """Stop serving; finish tier copies and save policy history (see the manager)."""
        ...
