"""STRATO_TIERS: one string naming the local tiers, fastest first.

    vram:auto,ram:4GiB,disk:/tmp/strato:8GiB,disk:/mnt/efs/strato:200GiB

`vram:auto` (or `vram:<size>`) asks NVML for free memory and is dropped on machines
without a GPU; `ram:<size>` is the memfd tier; `disk:<path>:<size>` a directory tier
(the path may itself contain ':'; the size is after the last one). The remote is never
listed: it is whatever the model reference names. Parsing is pure; `build_tiers` is
the only step that touches the system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tiers.base import Tier
    from tiers.vram import VramTier

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
          "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class TierSpecError(ValueError):
    """STRATO_TIERS is malformed; the message names the offending item."""


def parse_size(text: str) -> int:
    """'8GiB' -> 8589934592 (binary units; a bare number is bytes).

    The one size parser: STRATO_TIERS capacities and the byte-valued settings
    (STRATO_CHUNK, STRATO_MAX_BODY) use it, so they accept the same spellings.
    """
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise TierSpecError(f"not a size: {text!r} (use e.g. 512MiB, 8GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class TierSpec:
    kind: str                  # "vram" | "ram" | "disk"
    capacity: int | None       # None = auto (vram only)
    path: str | None = None    # disk only


def parse_tiers(text: str) -> list[TierSpec]:
    """Parse a STRATO_TIERS string; raises TierSpecError naming the bad item."""
    specs: list[TierSpec] = []
    for raw in (item.strip() for item in text.split(",")):
        if not raw:
            continue
        kind, _, rest = raw.partition(":")
        kind = kind.strip().lower()
        if kind == "vram":
            cap = None if rest.strip().lower() in ("", "auto") else parse_size(rest)
            specs.append(TierSpec("vram", cap))
        elif kind == "ram":
            if not rest:
                raise TierSpecError(f"{raw!r}: ram needs a size, e.g. ram:4GiB")
            specs.append(TierSpec("ram", parse_size(rest)))
        elif kind == "disk":
            path, sep, size = rest.rpartition(":")
            if not sep or not path:
                raise TierSpecError(f"{raw!r}: disk needs a path and a size, "
                                    "e.g. disk:/tmp/strato:8GiB")
            specs.append(TierSpec("disk", parse_size(size), path))
        else:
            raise TierSpecError(f"{raw!r}: unknown tier kind {kind!r} "
                                "(use vram, ram or disk)")
    kinds = [s.kind for s in specs]
    if kinds.count("vram") > 1 or kinds.count("ram") > 1:
        raise TierSpecError(f"{text!r}: at most one vram and one ram tier")
    if "vram" in kinds and kinds.index("vram") != 0:
        raise TierSpecError(f"{text!r}: vram must come first (tiers are fastest first)")
    paths = [s.path for s in specs if s.path]
    if len(set(paths)) != len(paths):
        raise TierSpecError(f"{text!r}: a disk path is listed twice")
    return specs


def build_tiers(text: str) -> tuple[list[Tier], VramTier | None]:
    """(storage tiers fastest first, VramTier or None) for a STRATO_TIERS string.

    The vram entry is kept only when NVML reports a GPU: CPU-only machines simply have
    no vram tier.
    """
    from tiers.disk import DiskTier
    from tiers.ram import RamTier
    from tiers.vram import VramTier, free_device_memory

    tiers: list[Tier] = []
    vram = None
    for spec in parse_tiers(text):
        if spec.kind == "vram":
            if free_device_memory() is not None:
                vram = VramTier(spec.capacity)
        elif spec.kind == "ram":
            assert spec.capacity is not None
            tiers.append(RamTier(spec.capacity))
        else:
            assert spec.capacity is not None and spec.path is not None
            try:
                tiers.append(DiskTier(spec.path, spec.capacity))
            except OSError as exc:
                raise TierSpecError(f"disk tier {spec.path}: cannot use the directory "
                                    f"({exc.strerror or exc})") from exc
    return tiers, vram
