"""tiers/base.py: the storage vocabulary. Digest spelling, fetch-plan validation, chunk
arithmetic, the Tier protocol both real tiers satisfy, the one metadata scan, stats
and pin counts."""

from __future__ import annotations

import threading
from pathlib import Path

import blake3
import pytest

from tiers.base import (
    BlobPlan,
    PinCounts,
    Tier,
    TierStats,
    chunk_range,
    describe,
    find_digests,
    n_chunks,
    normalize_digest,
)
from tiers.disk import DiskTier
from tiers.ram import RamTier

HEX = "ab" * 32


def store(tier: Tier, data: bytes, **meta: str) -> str:
    """Write `data` into `tier` the way the loader does; returns its digest."""
    digest = blake3.blake3(data).hexdigest()
    writer = tier.begin_write(digest, len(data))
    writer.write_at(0, data)
    writer.commit(digest, meta)
    return digest


@pytest.fixture
def tiers(tmp_path: Path) -> list[Tier]:
    made: list[Tier] = [RamTier(1 << 20), DiskTier(tmp_path / "disk", 1 << 20)]
    yield made
    for tier in made:
        tier.close()


def test_digests_are_normalised_and_anything_else_refused() -> None:
    assert normalize_digest(f" BLAKE3:{HEX.upper()} ") == HEX
    for bad in ("", "blake3:", "ab" * 31, "zz" * 32, f"sha256:{HEX}", "../" + HEX[3:]):
        with pytest.raises(ValueError, match="not a BLAKE3"):
            normalize_digest(bad)


def test_chunk_arithmetic() -> None:
    assert [n_chunks(s, 4) for s in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    assert [chunk_range(i, 10, 4) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]


def test_blob_plans_are_checked_when_made() -> None:
    plan = BlobPlan(url="s3://b/m.gguf", size=10, digest=f"blake3:{HEX}", chunk_size=4,
                    chunk_digests=(HEX,) * 3)
    assert plan.digest == HEX and plan.label == "s3://b/m.gguf"
    assert BlobPlan(url="x", name="gemma3:270m").label == "gemma3:270m"
    with pytest.raises(ValueError, match="one entry per chunk"):
        BlobPlan(url="x", size=10, chunk_size=4, chunk_digests=(HEX,) * 2)
    with pytest.raises(ValueError, match="zstd plans need"):
        BlobPlan(url="x", compression="zstd")
    with pytest.raises(ValueError, match="n_chunks"):
        BlobPlan(url="x", size=10, chunk_size=4, compression="zstd", frame_offsets=(0, 5))
    with pytest.raises(ValueError, match="chunk_size"):
        BlobPlan(url="x", chunk_size=0)


def test_both_tiers_satisfy_the_protocol_callers_use(tiers: list[Tier]) -> None:
    ram, disk = tiers
    assert all(isinstance(t, Tier) for t in tiers)
    assert (ram.persistent, ram.root) == (False, None)
    assert disk.persistent and disk.root is not None and disk.root.is_dir()
    evicted: list[tuple[str, str]] = []
    for tier in tiers:
        tier.on_evict = lambda d, t=tier: evicted.append((t.name, d))
        digest = store(tier, b"x" * 100)
        assert tier.evict(digest) and not tier.contains(digest)
    assert [name for name, _ in evicted] == [ram.name, disk.name]


def test_one_scan_finds_blobs_by_name_or_source_fastest_first(tiers: list[Tier]) -> None:
    ram, disk = tiers
    a = store(ram, b"a" * 64, name="m:a", source="s3://b/a.gguf")
    store(disk, b"a" * 64, name="m:a", source="s3://b/a.gguf")
    b = store(disk, b"b" * 64, name="m:b")
    assert find_digests(tiers, names=["m:a"]) == [a]                # once, though in both
    assert find_digests(tiers, sources=["s3://b/a.gguf"]) == [a]
    assert find_digests(tiers, names={"m:a", "m:b"}) == [a, b]
    assert find_digests(tiers, names=["s3://b/a.gguf"]) == []       # a name is not a source
    assert find_digests(tiers) == []
    report = describe(tiers)
    assert [(t["name"], len(t["entries"])) for t in report] == [(ram.name, 1), (disk.name, 2)]
    assert report[0]["entries"][0]["meta"]["name"] == "m:a"


def test_stats_count_per_tier_and_forward_to_the_sink() -> None:
    seen: list[tuple[str, str, float]] = []
    stats = TierStats(sink=lambda kind, tier, value: seen.append((kind, tier, value)))
    stats.record("hit", "ram")
    stats.record("bytes", "ram", 4096)
    stats.record("miss", "disk")
    assert stats.snapshot() == {
        "ram": {"hits": 1, "misses": 0, "bytes_written": 4096, "evictions": 0},
        "disk": {"hits": 0, "misses": 1, "bytes_written": 0, "evictions": 0}}
    assert seen == [("hit", "ram", 1), ("bytes", "ram", 4096), ("miss", "disk", 1)]
    with pytest.raises(ValueError, match="unknown stats kind"):
        stats.record("promotion", "ram")


def test_pins_are_counted_per_engine() -> None:
    pins = PinCounts(threading.Lock())
    pins.pin(HEX)
    pins.pin(f"blake3:{HEX}")
    pins.unpin(HEX)
    assert pins.pinned(HEX)
    pins.unpin(HEX)
    assert not pins.pinned(HEX)
