"""strato's Prometheus collectors; code reaches them through core.metrics, which imports
this module (and prometheus_client) on first use.

Module-level collectors on a dedicated registry: a process serves one engine set, and
`/metrics` renders this registry only (no Python GC noise from the default one). On Lambda
the same events also go to EMF through Powertools in handlers/aws_lambda.py.
"""

from __future__ import annotations

from core import lazy_package

# The collectors without the package's __init__ (core.lazy_package): it imports the
# exposition module, and with it http.server, wsgiref, urllib.request and snappy, most
# of the import's 0.2 s of GIL-bound work on a cold start, where it runs beside the
# llama.cpp build (core.metrics.import_in_background). `render` imports exposition.
lazy_package.register("prometheus_client")

# metrics.py's `from . import values` asks the package for `values`: imported first, it is
# the package's attribute already, and the package's __init__ is not run for it.
import prometheus_client.values  # noqa: E402,F401  # isort: skip
from prometheus_client.metrics import (  # noqa: E402  (after the registration above)
    Counter,
    Gauge,
    Histogram,
    MetricWrapperBase,
)
from prometheus_client.registry import CollectorRegistry  # noqa: E402

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# HTTP (handlers)
requests_total = Counter("strato_requests_total", "HTTP requests by route and status.",
                         ["route", "status"], registry=REGISTRY)
# engine / scheduler
ttft_seconds = Histogram("strato_ttft_seconds", "Time from request arrival to first token.",
                         buckets=_LATENCY_BUCKETS, registry=REGISTRY)
inter_token_seconds = Histogram("strato_inter_token_seconds", "Time between streamed tokens.",
                                buckets=_LATENCY_BUCKETS, registry=REGISTRY)
tokens_in_total = Counter("strato_tokens_in_total", "Prompt tokens processed.", registry=REGISTRY)
tokens_out_total = Counter("strato_tokens_out_total", "Tokens generated.", registry=REGISTRY)
queue_depth = Gauge("strato_queue_depth", "Requests waiting for a sequence slot.",
                    registry=REGISTRY)
batch_size = Histogram("strato_batch_size", "Sequences decoded per llama_decode step.",
                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
kv_cells_used = Gauge("strato_kv_cells_used", "KV cache cells in use.", registry=REGISTRY)
prefix_cache_hits_total = Counter("strato_prefix_cache_hits_total",
                                  "Prompt tokens reused from the KV cache.", registry=REGISTRY)
# models and tiers (core/serving/manager.py records what tiers/ reports)
cold_starts_total = Counter("strato_cold_starts_total", "Process cold starts.", registry=REGISTRY)
load_seconds = Histogram("strato_load_seconds", "Model load time by source tier.", ["tier"],
                         buckets=_LOAD_BUCKETS, registry=REGISTRY)
tier_hits_total = Counter("strato_tier_hits_total", "Model found in a tier.", ["tier"],
                          registry=REGISTRY)
tier_misses_total = Counter("strato_tier_misses_total", "Model absent from a tier.", ["tier"],
                            registry=REGISTRY)
tier_bytes_total = Counter("strato_tier_bytes_total", "Bytes written into a tier.", ["tier"],
                           registry=REGISTRY)
tier_evictions_total = Counter("strato_tier_evictions_total", "Models evicted from a tier.",
                               ["tier"], registry=REGISTRY)
load_progress_bytes = Gauge("strato_load_progress_bytes", "Bytes fetched of the model loading.",
                            ["model"], registry=REGISTRY)
load_throughput_bytes = Gauge("strato_load_throughput_bytes_per_second",
                              "Current fetch rate of the model loading.", ["model"],
                              registry=REGISTRY)

# phases of each load (core/serving/load_timings.py): where a cold start's time goes
load_phase_seconds = Histogram("strato_load_phase_seconds",
                               "Seconds per phase of a model load (process start to first "
                               "token): settings, import_*, manifest, header, fetch, "
                               "verify_cpu, tier_writes, llama_load, gate_wait, first_token.",
                               ["phase"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
load_fetch_bytes = Histogram("strato_load_fetch_bytes", "Bytes read from the remote per load.",
                             buckets=(1e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10, 2.5e10),
                             registry=REGISTRY)
load_fetch_streams = Histogram("strato_load_fetch_streams",
                               "Concurrent ranged reads used per load.",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
load_fetch_mbps = Histogram("strato_load_fetch_megabytes_per_second",
                            "Fetch throughput per load (MB/s over the whole fetch).",
                            buckets=(10, 25, 50, 100, 200, 400, 800, 1600, 3200),
                            registry=REGISTRY)


def reset() -> None:
    """Zero every strato metric: a process restored from a snapshot (Lambda SnapStart) is a
    new environment, and the snapshot's counts belong to the one that was snapshotted."""
    for collector in list(REGISTRY._collector_to_names):   # no public list of collectors
        if not isinstance(collector, MetricWrapperBase):
            continue
        if collector._labelnames:
            collector.clear()                # labelled: drop every child
        else:
            collector._metric_init()  # type: ignore[no-untyped-call]  # unlabelled: anew


def render() -> bytes:
    """Prometheus text exposition of every strato metric."""
    from prometheus_client.exposition import generate_latest

    return generate_latest(REGISTRY)
