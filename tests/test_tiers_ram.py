"""The RAM tier: memfd blobs readable through /proc/self/fd, sealed, LRU within capacity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_gguf import digest
from tiers.errors import TierFull
from tiers.ram import RamTier

A, B, C = (bytes([i]) * 1000 for i in (1, 2, 3))


def put(tier: RamTier, data: bytes) -> str:
    d = digest(data)
    w = tier.begin_write(d, len(data))
    w.write_at(0, data)
    w.commit(d, {"size": len(data)})
    return d


def test_blob_is_a_readable_sealed_memfd(tmp_path: Path) -> None:
    tier = RamTier(10_000)
    d = put(tier, A)
    path = tier.path(d)
    assert path.startswith("/proc/self/fd/") and Path(path).read_bytes() == A
    fd = int(path.rsplit("/", 1)[1])
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"x", 0)                  # sealed: the verified bytes stay verified
    assert tier.meta(d) == {"size": 1000} and tier.usage() == 1000


def test_bytes_written_in_place_are_the_blob_and_sealed_on_commit() -> None:
    tier = RamTier(10_000)
    w = tier.begin_write(digest(A + B), 2000)
    first, second = w.buffer(0, 1000), w.buffer(1000, 1000)
    first[:] = A
    second[:] = B
    assert w.read_at(500, 1000) == A[500:] + B[:500]
    del first, second             # a fetch drops its views; the seal needs the mapping gone
    w.commit(digest(A + B))
    fd = int(tier.path(digest(A + B)).rsplit("/", 1)[1])
    assert os.pread(fd, 2000, 0) == A + B
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"x", 0)
    with pytest.raises(ValueError, match="outside"):
        tier.begin_write("other", 10).buffer(5, 10)


def test_uncommitted_and_aborted_writes_are_invisible() -> None:
    tier = RamTier(10_000)
    w = tier.begin_write(digest(A), len(A))
    w.write_at(0, A)
    assert not tier.contains(digest(A)) and tier.usage() == 1000     # reserved
    w.abort()
    assert tier.usage() == 0 and tier.entries() == []


def test_lru_and_pins() -> None:
    tier = RamTier(2500)
    evicted: list[str] = []
    tier.on_evict = evicted.append
    a, b = put(tier, A), put(tier, B)
    tier.path(a)                                 # touch a: b is now least recent
    c = put(tier, C)
    assert evicted == [b] and tier.contains(a) and tier.contains(c)
    tier.pin(a)
    tier.pin(c)
    with pytest.raises(TierFull, match="in use"):
        tier.begin_write(digest(B), 1000)
    with pytest.raises(TierFull, match="exceeds"):
        tier.begin_write(digest(B), 5000)
    tier.unpin(a)
    put(tier, B)
    assert not tier.contains(a) and tier.contains(c)


def test_duplicate_commit_keeps_one_copy() -> None:
    tier = RamTier(10_000)
    d = digest(A)
    w1, w2 = tier.begin_write(d, 1000), tier.begin_write(d, 1000)
    for w in (w1, w2):
        w.write_at(0, A)
        w.commit(d)
    assert len(tier.entries()) == 1 and tier.usage() == 1000
