"""Which kind of Lambda execution environment this process is, and what each forbids.

Lambda says how an environment was started in AWS_LAMBDA_INITIALIZATION_TYPE
(`on-demand`, `provisioned-concurrency`, `snap-start`); Lambda Managed Instances set
AWS_LAMBDA_MAX_CONCURRENCY (awslambdaric then forks that many worker processes, each
running init). The modes differ in what init may cost and where the weights may live:

- on-demand: init has 10 s; past that Lambda kills it and runs it again inside the first
  invoke, which would restart the download. So init returns at `init_budget` seconds of
  process age and the load goes on; the first request waits for it (`init_budget`).
- provisioned concurrency and SnapStart: init runs ahead of traffic (SnapStart: up to
  15 min, then snapshotted), so it loads the model fully.
- SnapStart: no EFS and at most 512 MB of /tmp, so the weights go into the RAM tier (and
  with it into the snapshot).
- Managed Instances: N processes on one instance share /tmp; a RAM tier (memfd) would be
  one private copy per process, so only disk tiers, read through mmap (one page cache).

`check` refuses a configuration the mode cannot run, at init, with a message that names
the setting; template.yaml refuses the same combinations at deploy time.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping

from core.config import Settings
from core.errors import BadRequest
from tiers.tier_config import TierSpecError, parse_tiers

SNAPSTART_TMP = 512 << 20          # SnapStart's /tmp ceiling (bytes)


class Mode(str, enum.Enum):
    ON_DEMAND = "on-demand"
    PROVISIONED = "provisioned-concurrency"
    SNAPSTART = "snap-start"
    MANAGED = "managed-instances"


def detect(env: Mapping[str, str] | None = None) -> Mode:
    env = os.environ if env is None else env
    if env.get("AWS_LAMBDA_MAX_CONCURRENCY"):
        return Mode.MANAGED
    try:
        return Mode(env.get("AWS_LAMBDA_INITIALIZATION_TYPE") or "on-demand")
    except ValueError:
        return Mode.ON_DEMAND


def problems(settings: Settings, mode: Mode) -> list[str]:
    """What in `settings` this mode cannot run; empty when fine."""
    try:
        specs = parse_tiers(settings.tiers_spec())
    except TierSpecError:
        return []                      # the loader reports a bad spec with its own 400
    out = []
    if mode is Mode.SNAPSTART:
        if not any(s.kind == "ram" for s in specs):
            out.append("SnapStart keeps the model in the snapshot: STRATO_TIERS needs a "
                       "ram tier (e.g. ram:2GiB)")
        for s in specs:
            if s.kind == "disk" and not _under(s.path or "", "/tmp"):
                out.append(f"SnapStart does not support EFS or other mounts: remove "
                           f"disk:{s.path} from STRATO_TIERS")
            elif s.kind == "disk" and (s.capacity or 0) > SNAPSTART_TMP:
                out.append(f"SnapStart allows at most 512 MB of /tmp: disk:{s.path} asks "
                           f"for {s.capacity} bytes")
    if mode is Mode.MANAGED and any(s.kind == "ram" for s in specs):
        out.append("Managed Instances run one process per concurrent request: a ram tier "
                   "would hold a private copy of the model in each; use only disk tiers "
                   "(e.g. disk:/tmp/strato:8GiB), which every process maps from one "
                   "page cache")
    return out


def check(settings: Settings, mode: Mode) -> None:
    """Raise BadRequest naming every setting `mode` refuses (init then fails loudly)."""
    found = problems(settings, mode)
    if found:
        raise BadRequest(f"settings not allowed with Lambda {mode.value}: " + "; ".join(found))


def init_budget(settings: Settings, mode: Mode) -> float | None:
    """Seconds of process age init may spend waiting for the model, or None: wait for it.

    Only on-demand init has a short limit; 0 switches the budget off.
    """
    if mode is not Mode.ON_DEMAND or settings.init_budget == 0:
        return None
    return settings.init_budget


def process_age() -> float:
    """Seconds since this process started (Lambda's init clock starts with it)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _under(path: str, root: str) -> bool:
    path = os.path.normpath(path)
    return path == root or path.startswith(root + "/")
