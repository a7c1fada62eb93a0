"""What the model manager does with each access: promotion and prefetch, in the background.

The decisions are tiers/policy.py's (pure, persisted in the first disk tier); this module
only acts on them off the request path. One worker thread does the copying and
fetching, so a burst of requests queues at most one job per model and never makes a
request wait for a promotion.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from core.config import Settings
from tiers.loader import Loader
from tiers.policy import Policy, PolicyConfig

log = logging.getLogger("strato.models")

SAVE_EVERY = 10   # accesses between writes of the stats file (also written at close)


class Promoter:
    """Records accesses; promotes hot models a tier up; prefetches the likely next one.

    `prefetch(key)` is supplied by the manager: it resolves a model and fetches its
    bytes into the tiers without loading an engine.
    """

    def __init__(self, loader: Loader, settings: Settings,
                 prefetch: Callable[[str], None] | None = None) -> None:
        self.loader = loader
        self.policy = Policy.for_tiers(loader.tiers, PolicyConfig(
            promote_per_hour=settings.promote_per_hour,
            prefetch_threshold=settings.prefetch_threshold))
        self.prefetch = prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="strato-promote")
        self._pending: set[str] = set()
        self._accesses = 0
        self.promotions = 0
        self.prefetches = 0

    def accessed(self, key: str, digest: str | None) -> None:
        """Called on every request for a loaded model; never blocks on I/O."""
        promote, following = self.policy.record(key, time.time())
        self._accesses += 1
        if promote and digest is not None and self._below_fastest(digest):
            self._submit(f"promote:{digest}", self._promote, digest)
        if following is not None and following != key and self.prefetch is not None:
            self._submit(f"prefetch:{following}", self._prefetch, following)
        if self._accesses % SAVE_EVERY == 0:
            self._submit("save", self.policy.save)

    def _below_fastest(self, digest: str) -> bool:
        tiers = self.loader.tiers
        return bool(tiers) and not tiers[0].contains(digest) and \
            self.loader.locate(digest) is not None

    def _submit(self, job: str, fn: Callable[..., Any], *args: Any) -> None:
        if job in self._pending:
            return
        self._pending.add(job)

        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # background work must not crash
                log.warning("%s failed: %s", job, exc)
            finally:
                self._pending.discard(job)

        try:
            self._pool.submit(run)
        except RuntimeError:          # shut down: the server is closing
            self._pending.discard(job)

    def _promote(self, digest: str) -> None:
        if self.loader.promote(digest):
            self.promotions += 1
            log.info("promoted %s to a faster tier", digest[:12])

    def _prefetch(self, key: str) -> None:
        assert self.prefetch is not None
        self.prefetch(key)
        self.prefetches += 1
        log.info("prefetched %s (likely next)", key)

    def report(self) -> dict[str, Any]:
        now = time.time()
        stats = self.policy.stats
        return {"requests_last_hour": {m: len(ts) for m, ts in stats.accesses.items()},
                "transitions": stats.transitions, "promotions": self.promotions,
                "prefetches": self.prefetches,
                "promote_per_hour": self.policy.config.promote_per_hour,
                "hot": [m for m in stats.accesses
                        if stats.rate_per_hour(m, now) >= self.policy.config.promote_per_hour]}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.policy.save()
