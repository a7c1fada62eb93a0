"""tiers/tier_config.py: STRATO_TIERS parsing (pure) and building real tier objects from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiers.disk import DiskTier
from tiers.ram import RamTier
from tiers.tier_config import TierSpec, TierSpecError, build_tiers, parse_size, parse_tiers


def test_the_documented_example() -> None:
    specs = parse_tiers("vram:auto,ram:4GiB,disk:/tmp/strato:8GiB,disk:/mnt/efs/strato:200GiB")
    assert specs == [TierSpec("vram", None), TierSpec("ram", 4 << 30),
                     TierSpec("disk", 8 << 30, "/tmp/strato"),
                     TierSpec("disk", 200 << 30, "/mnt/efs/strato")]


def test_sizes() -> None:
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1.5GB") == 3 << 29
    assert parse_size("100") == 100
    assert parse_tiers("vram:6GiB")[0] == TierSpec("vram", 6 << 30)


def test_paths_with_colons_and_spaces() -> None:
    assert parse_tiers(" disk:/data/a:b:1GiB , ram:1MiB ") == [
        TierSpec("disk", 1 << 30, "/data/a:b"), TierSpec("ram", 1 << 20)]
    assert parse_tiers("") == []


@pytest.mark.parametrize("bad, words", [
    ("ram", "needs a size"), ("ram:lots", "not a size"), ("disk:/tmp", "path and a size"),
    ("nvme:/x:1GiB", "unknown tier kind"), ("ram:1GiB,vram:auto", "vram must come first"),
    ("ram:1GiB,ram:2GiB", "at most one"), ("disk:/a:1GiB,disk:/a:2GiB", "listed twice"),
])
def test_malformed_strings_name_the_problem(bad: str, words: str) -> None:
    with pytest.raises(TierSpecError, match=words):
        parse_tiers(bad)


def test_build_makes_real_tiers_and_drops_vram_without_a_gpu(tmp_path: Path) -> None:
    tiers, vram = build_tiers(f"vram:auto,ram:1MiB,disk:{tmp_path}/c:2MiB")
    assert [type(t) for t in tiers] == [RamTier, DiskTier]
    assert tiers[0].capacity == 1 << 20 and tiers[1].capacity == 2 << 20
    assert tiers[1].name == f"disk:{tmp_path}/c" and (tmp_path / "c" / "blobs").is_dir()
    from tiers.vram import free_device_memory
    assert (vram is None) == (free_device_memory() is None)


def test_an_unusable_disk_path_is_a_spec_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TierSpecError, match="cannot use the directory"):
        build_tiers(f"disk:{blocker}/cache:1GiB")
