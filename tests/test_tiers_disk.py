"""The directory tier: atomic visibility, LRU within capacity, pins, resume, clean-up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.tiny_gguf import digest
from tiers.disk import DiskTier
from tiers.errors import TierFull

A, B, C = (bytes([i]) * 1000 for i in (1, 2, 3))


def put(tier: DiskTier, data: bytes, **meta) -> str:
    d = digest(data)
    w = tier.begin_write(d, len(data))
    w.write_at(0, data)
    w.commit(d, meta)
    return d


def test_a_blob_is_invisible_until_committed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10_000)
    d = digest(A)
    w = tier.begin_write(d, len(A))
    w.write_at(500, A[500:])
    w.write_at(0, A[:500])
    assert not tier.contains(d) and tier.entries() == []
    assert [p.suffix for p in tier.blobs.iterdir()] == [".partial"]
    w.commit(d, {"source": "s3://b/a"})
    assert tier.contains(d) and Path(tier.path(d)).read_bytes() == A
    assert tier.meta(d) == {"source": "s3://b/a"}
    assert sorted(p.name for p in tier.blobs.iterdir()) == [f"{d}.gguf", f"{d}.json"]


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10_000)
    w = tier.begin_write(digest(A), len(A))
    w.write_at(0, A)
    w.abort()
    w.abort()
    assert list(tier.blobs.iterdir()) == [] and tier.usage() == 0


def test_lru_eviction_within_capacity_skips_pinned(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 2500)
    evicted: list[str] = []
    tier.on_evict = evicted.append
    a = put(tier, A)
    b = put(tier, B)
    old = time.time() - 100
    os.utime(tier.blobs / f"{a}.gguf", (old, old))
    os.utime(tier.blobs / f"{b}.gguf", (old + 10, old + 10))
    tier.path(a)                                   # a is now the most recent
    c = put(tier, C)
    assert evicted == [b] and tier.contains(a) and tier.contains(c)
    tier.pin(a)
    tier.pin(c)
    with pytest.raises(TierFull, match="in use"):
        tier.begin_write(digest(B), 1000)
    assert not tier.evict(a)
    tier.unpin(c)
    put(tier, B)
    assert tier.contains(a) and not tier.contains(c)
    assert tier.usage() == 2000


def test_a_blob_larger_than_the_tier(tmp_path: Path) -> None:
    with pytest.raises(TierFull, match="exceeds the capacity"):
        DiskTier(tmp_path, 999).begin_write(digest(A), 1000)


def test_an_abandoned_partial_is_adopted_and_resumed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10_000)
    d = digest(A)
    # what a killed process leaves: a partial that nobody holds a lock on
    (tier.blobs / f"{d}.99999-0.partial").write_bytes(A[:600] + b"\0" * 400)
    w = tier.begin_write(d, len(A), resume=True)
    assert w.resumed_bytes() == 1000 and w.read_at(0, 600) == A[:600]
    w.write_at(600, A[600:])
    w.commit(d)
    assert Path(tier.path(d)).read_bytes() == A
    assert [p.name for p in tier.blobs.glob("*.partial")] == []


def test_a_live_partial_is_neither_adopted_nor_removed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10_000)
    d = digest(A)
    first = tier.begin_write(d, len(A))
    first.write_at(0, A)
    second = tier.begin_write(d, len(A), resume=True)   # another writer, same blob
    assert second.resumed_bytes() == 0
    assert first.partial.exists() and second.partial != first.partial
    second.write_at(0, A)
    second.commit(d)
    first.commit(d)              # the loser drops its identical copy
    assert sorted(p.name for p in tier.blobs.iterdir()) == [f"{d}.gguf", f"{d}.json"]


def test_stale_partials_without_resume_are_cleaned(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10_000)
    d = digest(A)
    (tier.blobs / f"{d}.99999-0.partial").write_bytes(b"junk")
    w = tier.begin_write(d, len(A))
    assert w.resumed_bytes() == 0
    assert [p for p in tier.blobs.glob("*.partial")] == [w.partial]
    w.abort()


def test_entries_report_sizes_pins_and_meta(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10_000)
    a = put(tier, A, name="a:latest")
    tier.pin(a)
    (entry,) = tier.entries()
    assert (entry.digest, entry.size, entry.pinned, entry.meta["name"]) == (a, 1000, True,
                                                                            "a:latest")


def test_resume_in_a_nearly_full_tier_keeps_the_partial(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1500)          # room for one blob, not for two copies of it
    d = digest(A)
    (tier.blobs / f"{d}.99999-0.partial").write_bytes(A[:700] + b"\0" * 300)
    w = tier.begin_write(d, len(A), resume=True)
    assert w.resumed_bytes() == 1000 and w.read_at(0, 700) == A[:700]
    w.abort()
