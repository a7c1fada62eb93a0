"""Promotion and prefetch decisions: which model to copy up, which to fetch ahead.

Every served request records an access. Two pure decisions read that history:

- promote: a model requested more than `promote_per_hour` times in the last hour is
  worth a copy in the next faster tier (a disk hit becomes a RAM hit);
- prefetch: after serving A, the model most often requested right after A (first-order
  transition counts) is fetched ahead when its share of A's transitions passes
  `prefetch_threshold` and it has been seen at least `min_transitions` times.

The history serializes to JSON and lives in the first persistent (disk) tier, so a cold
instance on the same EFS starts with what earlier instances learned. Concurrent
instances overwrite each other's file (last writer wins): losing a few counts changes
a heuristic, never correctness.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tiers.base import Tier

WINDOW = 3600.0
STATS_FILE = "policy.json"
SCHEMA = 1


@dataclass(frozen=True)
class PolicyConfig:
    promote_per_hour: float = 5.0
    prefetch_threshold: float = 0.5
    min_transitions: int = 2
    max_models: int = 256          # history kept for this many models at most


@dataclass
class AccessStats:
    """Access times per model (last hour) and first-order transition counts."""

    accesses: dict[str, list[float]] = field(default_factory=dict)
    transitions: dict[str, dict[str, int]] = field(default_factory=dict)
    last: str | None = None

    def record(self, model: str, now: float) -> None:
        times = [t for t in self.accesses.get(model, []) if now - t < WINDOW]
        times.append(now)
        self.accesses[model] = times
        if self.last is not None and self.last != model:
            row = self.transitions.setdefault(self.last, {})
            row[model] = row.get(model, 0) + 1
        self.last = model

    def rate_per_hour(self, model: str, now: float) -> float:
        return float(sum(1 for t in self.accesses.get(model, []) if now - t < WINDOW))

    def prune(self, now: float, max_models: int) -> None:
        """Forget models idle for a window, then the least recent beyond `max_models`."""
        self.accesses = {m: [t for t in ts if now - t < WINDOW]
                         for m, ts in self.accesses.items()}
        self.accesses = {m: ts for m, ts in self.accesses.items() if ts}
        if len(self.accesses) > max_models:
            keep = sorted(self.accesses, key=lambda m: self.accesses[m][-1])[-max_models:]
            self.accesses = {m: self.accesses[m] for m in keep}
        if len(self.transitions) > max_models:
            busiest = sorted(self.transitions,
                             key=lambda m: sum(self.transitions[m].values()))[-max_models:]
            self.transitions = {m: self.transitions[m] for m in busiest}

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, "accesses": self.accesses,
                           "transitions": self.transitions, "last": self.last},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AccessStats":
        """Parse saved stats; anything unreadable yields empty stats (it is a cache)."""
        try:
            data = json.loads(text)
            if data.get("schema") != SCHEMA:
                return cls()
            return cls({str(k): [float(t) for t in v] for k, v in data["accesses"].items()},
                       {str(a): {str(b): int(n) for b, n in row.items()}
                        for a, row in data["transitions"].items()},
                       data.get("last"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()


def should_promote(stats: AccessStats, model: str, now: float, config: PolicyConfig) -> bool:
    """True when the model's request rate over the last hour passes the threshold."""
    return stats.rate_per_hour(model, now) >= config.promote_per_hour


def prefetch_candidate(stats: AccessStats, after: str, config: PolicyConfig) -> str | None:
    """The model most often requested right after `after`, if likely enough."""
    row = stats.transitions.get(after)
    if not row:
        return None
    total = sum(row.values())
    best = max(sorted(row), key=lambda m: row[m])
    if row[best] < config.min_transitions or row[best] / total < config.prefetch_threshold:
        return None
    return best


class Policy:
    """Access stats plus where they persist; thread-safe. I/O only in load/save."""

    def __init__(self, config: PolicyConfig | None = None, path: Path | None = None) -> None:
        self.config = config or PolicyConfig()
        self.path = path
        self._lock = threading.Lock()
        self.stats = self._load()

    @classmethod
    def for_tiers(cls, tiers: Sequence[Tier], config: PolicyConfig | None = None) -> "Policy":
        """Stats file in the first persistent tier (none: history lives in memory)."""
        root = next((t.root for t in tiers if t.persistent and t.root is not None), None)
        return cls(config, root / STATS_FILE if root is not None else None)

    def _load(self) -> AccessStats:
        if self.path is None:
            return AccessStats()
        try:
            return AccessStats.from_json(self.path.read_text())
        except OSError:
            return AccessStats()

    def record(self, model: str, now: float) -> tuple[bool, str | None]:
        """Record an access; return (promote this model?, model to prefetch or None)."""
        with self._lock:
            self.stats.record(model, now)
            self.stats.prune(now, self.config.max_models)
            return (should_promote(self.stats, model, now, self.config),
                    prefetch_candidate(self.stats, model, self.config))

    def save(self) -> None:
        """Write the stats atomically (tmp file + rename) into the persistent tier."""
        if self.path is None:
            return
        with self._lock:
            text = self.stats.to_json()
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)   # a full disk must not fail a request
