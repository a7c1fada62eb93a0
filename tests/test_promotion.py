"""core/serving/promotion.py over real tiers: a hot model is copied a tier up in the
background, the likely next model is prefetched, and the history survives in the disk
tier. Progress is read from `report()`, the same numbers /v1/cache shows."""

from __future__ import annotations

from pathlib import Path

import blake3

from core.config import Settings
from core.serving.promotion import Promoter
from tests.polling import wait_until
from tiers.disk import DiskTier
from tiers.loader import Loader
from tiers.policy import STATS_FILE
from tiers.ram import RamTier


def test_hot_model_promoted_next_model_prefetched_history_kept(tmp_path: Path) -> None:
    ram, disk = RamTier(1 << 20), DiskTier(tmp_path / "disk", 1 << 20)
    data = b"gguf bytes " * 1000
    digest = blake3.blake3(data).hexdigest()
    writer = disk.begin_write(digest, len(data))
    writer.write_at(0, data)
    writer.commit(digest, {"name": "a:v1"})
    loader = Loader([ram, disk])
    prefetched: list[str] = []
    promoter = Promoter(loader, Settings(promote_per_hour=3, prefetch_threshold=0.5),
                        prefetch=prefetched.append)
    try:
        for key in ("a", "b", "a", "b", "a"):       # a is hot; after a comes b
            promoter.accessed(key, digest if key == "a" else None)
        assert wait_until(lambda: promoter.report()["promotions"] == 1)
        assert ram.contains(digest) and disk.contains(digest)
        with open(ram.path(digest), "rb") as f:
            assert f.read() == data
        assert wait_until(lambda: promoter.report()["prefetches"] >= 1)
        assert prefetched[0] == "b"
        report = promoter.report()
        assert report["hot"] == ["a"] and report["requests_last_hour"] == {"a": 3, "b": 2}
        promoter.accessed("a", digest)               # already in the fastest tier
    finally:
        promoter.close()
        ram.close()
    assert promoter.report()["promotions"] == 1
    assert (tmp_path / "disk" / STATS_FILE).is_file()
    again = Promoter(Loader([RamTier(1 << 20), disk]), Settings())
    try:
        assert again.report()["requests_last_hour"] == {"a": 4, "b": 2}
    finally:
        again.close()
