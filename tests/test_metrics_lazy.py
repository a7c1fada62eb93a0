"""core.metrics makes its collectors (and imports prometheus_client's metrics, without its
exposition until `render`) on first use, so the serving stack imports without it; events recorded with `later` before then are kept and
applied when the collectors come, and attribute access still works from anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, threading
import core.serving.manager, core.engine.llama, handlers.cli
from core import metrics
before = "prometheus_client" in sys.modules
metrics.later(lambda c: c.tier_misses_total.labels(tier="ram").inc(2))
still_lazy = "prometheus_client" not in sys.modules
metrics.import_in_background()
metrics._importer.join(60)
exposition = sorted(m for m in ("prometheus_client.exposition", "snappy", "wsgiref",
                                 "http.server") if m in sys.modules)
kept = metrics.REGISTRY.get_sample_value("strato_tier_misses_total", {"tier": "ram"})
metrics.later(lambda c: c.tier_misses_total.labels(tier="ram").inc(1))
now = metrics.REGISTRY.get_sample_value("strato_tier_misses_total", {"tier": "ram"})
same = metrics.ttft_seconds is metrics.collectors().ttft_seconds
try:
    metrics.no_such_metric
    missing = "found"
except AttributeError as exc:
    missing = str(exc)
text = metrics.render().decode()
import prometheus_client
from prometheus_client import generate_latest
completed = prometheus_client.REGISTRY is not None and callable(generate_latest)
print(json.dumps({"before": before, "still_lazy": still_lazy, "kept": kept, "now": now,
                  "same": same, "missing": missing, "exposition": exposition,
                  "completed": completed,
                  "rendered": 'strato_tier_misses_total{tier="ram"} 3.0' in text}))
"""


def test_collectors_come_on_first_use_and_keep_earlier_events() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["before"] is False        # the serving stack imports without prometheus
    assert got["still_lazy"] is True     # an event before the import does not import it
    assert got["kept"] == 2.0            # ... and is applied when the collectors come
    assert got["now"] == 3.0             # afterwards, events apply at once
    assert got["same"] is True
    assert got["missing"] == "module 'core.metrics' has no attribute 'no_such_metric'"
    assert got["rendered"] is True
    # The collectors came without prometheus_client's __init__ and its exposition
    # imports (core.lazy_package); the package still completes for whoever asks.
    assert got["exposition"] == []
    assert got["completed"] is True
