"""Which loaded models stay resident when another one must load: pure decisions.

"One loaded at a time unless memory allows more": a server keeps several engines when
their footprints fit the memory budget, and otherwise unloads the least recently used
idle ones. A model that is serving a request is never unloaded (closing an engine ends
its streams, and strato never interrupts a running stream); when only busy models stand
in the way, the new load waits for one to go idle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

KV_BYTES_PER_TOKEN_PER_LAYER = 4096   # f16 K+V at ~1k hidden: an overestimate for small models
OVERHEAD = 96 << 20                   # compute buffers, scheduler, tokenizer tables


@dataclass(frozen=True)
class Resident:
    key: str
    footprint: int      # bytes of RAM the engine holds beyond the shared model file
    last_used: float
    busy: bool


def footprint(model_bytes: int, n_ctx: int, n_layers: int) -> int:
    """Estimated resident bytes of one engine: weights + KV cache + fixed overhead.

    The weights are counted in full even though a RAM-tier memfd shares them with the
    tier: when the memory is tight the tier can be evicted, the mapping cannot.
    """
    return model_bytes + n_ctx * max(n_layers, 1) * KV_BYTES_PER_TOKEN_PER_LAYER + OVERHEAD


def to_unload(resident: Sequence[Resident], need: int, budget: int) -> list[str] | None:
    """Keys to unload (LRU first) so `need` more bytes fit in `budget`.

    [] when it fits already; None when even unloading every idle model is not enough
    (the caller waits for busy ones to finish, then asks again). With nothing resident
    a model always "fits": refusing the only model a server has would serve nothing,
    so a too-large model is tried and fails in llama.cpp with a clear error instead.
    """
    used = sum(r.footprint for r in resident)
    if used + need <= budget or not resident:
        return []
    out: list[str] = []
    for r in sorted((r for r in resident if not r.busy), key=lambda r: r.last_used):
        out.append(r.key)
        used -= r.footprint
        if used + need <= budget or used == 0:
            return out
    return None


def memory_budget(fraction: float = 0.8) -> int:
    """Bytes the engines may use: a fraction of the container's memory limit.

    The cgroup limit comes first (Lambda, Cloud Run and Kubernetes set it and the host's
    MemTotal means nothing there), then MemTotal.
    """
    limit = _cgroup_limit()
    total = _meminfo_total()
    candidates = [v for v in (limit, total) if v]
    return int(min(candidates) * fraction) if candidates else 8 << 30


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
