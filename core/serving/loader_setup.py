"""The server's tiered loader, built from settings, and how its tiers are reported.

`ModelManager` and the CLI's cache commands both build their loader here, so STRATO_TIERS
means the same thing in a server, a Lambda instance and `strato cache`.
"""

from __future__ import annotations

from typing import Any

from core import metrics
from core.config import Settings
from core.errors import ConfigError
from tiers.base import TierStats, describe
from tiers.loader import Loader
from tiers.tier_config import TierSpecError, build_tiers
from tiers.vram import VramTier

_METRIC = {"hit": "tier_hits_total", "miss": "tier_misses_total", "bytes": "tier_bytes_total",
           "eviction": "tier_evictions_total"}


def record_tier_event(kind: str, tier: str, value: float) -> None:
    """TierStats sink: tiers/ reports, core/ owns the Prometheus names."""
    name = _METRIC[kind]
    metrics.later(lambda c: getattr(c, name).labels(tier=tier).inc(value))


def build_loader(settings: Settings) -> tuple[Loader, VramTier | None]:
    """(Loader over STRATO_TIERS, VramTier or None); a bad spec is a ConfigError at
    start-up."""
    try:
        tiers, vram = build_tiers(settings.tiers_spec())
    except TierSpecError as exc:
        raise ConfigError(f"STRATO_TIERS: {exc}") from None
    return Loader(tiers, streams=settings.streams,
                  stats=TierStats(sink=record_tier_event)), vram


def describe_tiers(loader: Loader) -> list[dict[str, Any]]:
    """Each tier with its entries (named by the model that brought them) and counters."""
    stats = loader.stats.snapshot()
    tiers = describe(loader.tiers)
    for tier in tiers:
        tier.update(stats.get(tier["name"], {"hits": 0, "misses": 0, "bytes_written": 0,
                                             "evictions": 0}))
        for entry in tier["entries"]:
            entry["model"] = entry["meta"].get("name") or entry["meta"].get("source")
            entry["meta"] = {k: v for k, v in entry["meta"].items() if k != "gguf"}
    return tiers
