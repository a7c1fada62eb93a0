"""Prometheus metrics, defined once so every module records under the same names.

`metrics.ttft_seconds`, `metrics.render()` and the rest are core.metric_collectors',
imported on first use rather than with this module: prometheus_client's import was 0.04 s
of GIL-bound work (0.01 s since core.metric_collectors skips its exposition module, which
brings http.server, wsgiref, urllib and snappy, until `render`), and on a cold start every
such 0.04 s before the llama.cpp build starts delays the first token by as much
(measured on 2 vCPUs: moved to a thread beside the manifest read, it made that read
0.05 s slower). So a load's own events (tier hits, progress)
wait in `later` until the collectors exist, and the model manager calls
`import_in_background` as the build starts, when llama.cpp runs without the GIL.
"""

from __future__ import annotations

import threading
from collections import deque
from types import ModuleType
from typing import Any, Callable

_lock = threading.Lock()
_ready = False
# Events recorded before the import; bounded, as a process that never imports (none
# does today) must not grow it without end.
_pending: deque[Callable[[ModuleType], object]] = deque(maxlen=4096)
_importer: threading.Thread | None = None


def collectors() -> ModuleType:
    """The collectors' module, imported on the first call; the events `later` kept are
    applied before it is returned."""
    global _ready
    from core import metric_collectors  # Python's import lock: one import across threads

    if not _ready:
        with _lock:
            while _pending:
                _pending.popleft()(metric_collectors)
            _ready = True
    return metric_collectors


def later(record: Callable[[ModuleType], object]) -> None:
    """`record(collectors)` now if they are imported, else as soon as they are."""
    if not _ready:
        with _lock:
            if not _ready:
                _pending.append(record)
                return
    record(collectors())


def import_in_background() -> None:
    """Import the collectors on a daemon thread (once per process)."""
    global _importer
    with _lock:
        if _importer is None and not _ready:
            _importer = threading.Thread(target=collectors, name="strato-metrics",
                                         daemon=True)
            _importer.start()


def __getattr__(name: str) -> Any:
    """PEP 562: a collector or REGISTRY, kept here after its first lookup."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(collectors(), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def reset() -> None:
    """Zero every strato metric (core.metric_collectors.reset says when and why)."""
    collectors().reset()


def render() -> bytes:
    """Prometheus text exposition of every strato metric."""
    return collectors().render()  # type: ignore[no-any-return]
