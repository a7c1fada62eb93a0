"""Promotion and prefetch decisions (pure), and stats surviving a restart."""

from __future__ import annotations

from pathlib import Path

from tiers.disk import DiskTier
from tiers.policy import (AccessStats, Policy, PolicyConfig, prefetch_candidate,
                          should_promote)
from tiers.ram import RamTier

CFG = PolicyConfig(promote_per_hour=5, prefetch_threshold=0.5, min_transitions=2)


def test_promotes_when_the_hourly_rate_passes_the_threshold() -> None:
    stats = AccessStats()
    for i in range(4):
        stats.record("a", 1000.0 + i)
    assert not should_promote(stats, "a", 1004.0, CFG)
    stats.record("a", 1005.0)
    assert should_promote(stats, "a", 1005.0, CFG)
    # an hour later the old accesses no longer count
    assert not should_promote(stats, "a", 1005.0 + 3600, CFG)
    assert stats.rate_per_hour("a", 1005.0) == 5


def test_prefetch_follows_first_order_transitions() -> None:
    stats = AccessStats()
    for t, m in enumerate(["a", "b", "a", "b", "a", "c", "a"]):
        stats.record(m, float(t))
    assert stats.transitions["a"] == {"b": 2, "c": 1}
    assert prefetch_candidate(stats, "a", CFG) == "b"          # 2 of 3 > 0.5
    assert prefetch_candidate(stats, "b", CFG) == "a"
    assert prefetch_candidate(stats, "c", CFG) is None         # seen once only
    assert prefetch_candidate(stats, "zzz", CFG) is None
    strict = PolicyConfig(prefetch_threshold=0.7)
    assert prefetch_candidate(stats, "a", strict) is None       # 0.67 < 0.7


def test_repeated_requests_are_not_transitions() -> None:
    stats = AccessStats()
    for t in range(5):
        stats.record("a", float(t))
    assert stats.transitions == {}


def test_prune_bounds_the_history() -> None:
    stats = AccessStats()
    for i in range(10):
        stats.record(f"m{i}", float(i))
    stats.prune(9.0, max_models=3)
    assert sorted(stats.accesses) == ["m7", "m8", "m9"]
    stats.prune(9.0 + 7200, max_models=3)
    assert stats.accesses == {}


def test_stats_roundtrip_and_garbage_is_empty() -> None:
    stats = AccessStats()
    stats.record("a", 1.0)
    stats.record("b", 2.0)
    again = AccessStats.from_json(stats.to_json())
    assert again == stats
    assert AccessStats.from_json("not json") == AccessStats()
    assert AccessStats.from_json('{"schema": 99}') == AccessStats()


def test_stats_persist_in_the_first_persistent_tier(tmp_path: Path) -> None:
    tiers = [RamTier(1 << 20), DiskTier(tmp_path / "nvme", 1 << 20),
             DiskTier(tmp_path / "efs", 1 << 20)]
    policy = Policy.for_tiers(tiers, CFG)
    assert policy.path == tmp_path / "nvme" / "policy.json"
    results = [policy.record(m, float(t)) for t, m in enumerate(["a", "b", "a", "b", "a"])]
    assert results[-1] == (False, "b")
    policy.save()
    cold = Policy.for_tiers([RamTier(1 << 20), DiskTier(tmp_path / "nvme", 1 << 20)], CFG)
    assert cold.stats.transitions == {"a": {"b": 2}, "b": {"a": 2}}
    assert Policy.for_tiers([RamTier(1 << 20)]).path is None
