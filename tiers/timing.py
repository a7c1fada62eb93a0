"""One clock for the phase timings of a cold start, from the process's own start.

A cold start is judged from the moment the process exists, not from the first line of
strato that runs: interpreter start-up and imports are part of what a caller waits
for. The kernel keeps a process's start time in CLOCK_BOOTTIME ticks
(/proc/self/stat), so every phase is stamped on that clock and lines up with it.

`span` records one-off phases of the process (importing s3fs, llama_cpp, parsing the
settings) by name, once: the first load of a process pays them, later ones do not.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

_spans: dict[str, tuple[float, float]] = {}
_lock = threading.Lock()


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME (monotonic; the clock of a process's start time)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start() -> float | None:
    """When this process started, on the boottime clock (None off Linux).

    Field 22 of /proc/self/stat, in clock ticks; the command name (field 2) may hold
    spaces or parentheses, so fields are counted after its closing parenthesis.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def mark(name: str, start: float, end: float | None = None) -> None:
    """Record the one-off phase `name` (kept if it was recorded already)."""
    with _lock:
        _spans.setdefault(name, (start, boottime() if end is None else end))


@contextmanager
def span(name: str) -> Iterator[None]:
    """Time the block as the one-off phase `name` (the first time only)."""
    start = boottime()
    try:
        yield
    finally:
        mark(name, start)


def spans() -> dict[str, tuple[float, float]]:
    """Every one-off phase recorded so far: name -> (start, end) on the boottime clock."""
    with _lock:
        return dict(_spans)
