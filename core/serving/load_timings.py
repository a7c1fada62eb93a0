"""Phase timings of one model load, always on: one structured log line, /metrics
histograms, and the table `strato run --timings` and `strato pull` print.

A cold start is many phases, some in sequence and some side by side (the fetch streams
while llama.cpp builds the model): each phase is kept as a span on one clock
(tiers.timing, the clock of the process's own start), so a table of start, end and
length shows both where the time goes and what overlapped. The process's one-off
phases (settings, setting up the S3 client, importing botocore or s3fs, and llama_cpp)
belong to the first load only.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from core import metrics
from tiers.fetch import FetchStats
from tiers.timing import boottime, process_start, spans

log = logging.getLogger("strato.models")

# Display names and the metric label of every phase, in the order a cold start runs.
PHASES = {
    "settings": "process start -> settings",
    "s3_client": "S3 client (import + set-up)",
    "import_botocore": "  of which import botocore",
    "import_s3fs": "import s3fs",
    "import_llama_cpp": "import llama_cpp",
    "manifest": "manifest",
    "header": "fetch start -> header verified",
    "fetch": "tensor fetch (verified, written)",
    "llama_load": "llama.cpp model + context",
    "gate_wait": "  of which held at the tensor gate",
    "first_token": "first token",
}
_ONE_OFF = {"settings": "settings", "s3 client": "s3_client",
            "import botocore": "import_botocore",
            "import s3fs": "import_s3fs",
            "import llama_cpp": "import_llama_cpp"}


@dataclass
class LoadTimings:
    """The spans (boottime start, end) and fetch figures of one load."""

    model: str
    source: str = ""
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    fetch: FetchStats | None = None
    # The process's user and system CPU seconds at its first token (`note_cpu`): on two
    # vCPUs a cold start is bound by the CPU as much as by any one phase, and this is
    # the figure that says so (a Lambda function's CPU is its memory setting's share).
    cpu: tuple[float, float] | None = None

    def add(self, phase: str, start: float, end: float | None = None) -> None:
        self.spans[phase] = (start, boottime() if end is None else end)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = boottime()
        try:
            yield
        finally:
            self.add(phase, start)

    def add_fetch(self, stats: FetchStats | None) -> None:
        """The fetch's header and transfer spans (a tier hit has none)."""
        if stats is None or not stats.started:
            return
        self.fetch = stats
        if stats.header_at:
            self.add("header", stats.started, stats.header_at)
        if stats.finished:
            self.add("fetch", stats.started, stats.finished)

    def note_cpu(self) -> None:
        """The process's CPU so far (every thread, since it started): call at the first
        token of the process's first load."""
        times = os.times()
        self.cpu = (times.user, times.system)

    def take_process_phases(self) -> None:
        """The process's one-off phases, if they happened before this load ended."""
        for name, (start, end) in spans().items():
            if name in _ONE_OFF:
                self.spans.setdefault(_ONE_OFF[name], (start, end))

    # -- reporting ----------------------------------------------------------------------

    def origin(self) -> float:
        """Time zero of the table: the process start, else the earliest span."""
        start = process_start()
        if start is not None and "settings" in self.spans:
            return start
        return min((a for a, _ in self.spans.values()), default=boottime())

    def seconds(self, phase: str) -> float | None:
        span = self.spans.get(phase)
        return None if span is None else max(0.0, span[1] - span[0])

    def figures(self) -> dict[str, float]:
        """Totals that are not spans: bytes, streams, MB/s, CPU and write seconds."""
        f = self.fetch
        if f is None:
            return {}
        return {"bytes": f.bytes, "streams": f.streams, "requests": f.requests,
                "mb_per_s": round(f.rate / 1e6, 1), "verify_cpu_s": round(f.verify_cpu, 3),
                "tier_writes_s": round(f.write_seconds, 3)}

    def record(self) -> dict[str, Any]:
        """The structured line: each phase's start (from time zero) and length."""
        zero = self.origin()
        phases = {name: {"at": round(a - zero, 3), "s": round(b - a, 3)}
                  for name, (a, b) in self._ordered()}
        return {"model": self.model, "source": self.source, "phases": phases,
                "fetch": self.figures(),
                **({} if self.cpu is None else {"process_cpu_s": round(sum(self.cpu), 3)})}

    def log(self) -> None:
        record = self.record()
        log.info("load timings %s", json.dumps(record, separators=(",", ":")),
                 extra={"load_timings": record})

    def observe(self, phases: tuple[str, ...] | None = None) -> None:
        """Into the /metrics histograms (all phases, or only `phases`)."""
        for name, (a, b) in self._ordered():
            if phases is None or name in phases:
                metrics.load_phase_seconds.labels(phase=name).observe(max(0.0, b - a))
        if self.fetch is not None and phases is None:
            metrics.load_phase_seconds.labels(phase="verify_cpu").observe(self.fetch.verify_cpu)
            metrics.load_phase_seconds.labels(phase="tier_writes").observe(
                self.fetch.write_seconds)
            metrics.load_fetch_bytes.observe(self.fetch.bytes)
            metrics.load_fetch_streams.observe(self.fetch.streams)
            metrics.load_fetch_mbps.observe(self.fetch.rate / 1e6)

    def table(self) -> str:
        """Human-readable: one row per phase (from, to, seconds), then the fetch."""
        zero = self.origin()
        rows = [f"{'phase':<42} {'from':>7} {'to':>7} {'seconds':>8}"]
        for name, (a, b) in self._ordered():
            rows.append(f"{PHASES.get(name, name):<42} {a - zero:7.3f} {b - zero:7.3f} "
                        f"{b - a:8.3f}")
        f = self.fetch
        if f is not None:
            rows.append(f"fetch: {f.bytes / 1e6:.1f} MB, {f.streams} streams, {f.requests} "
                        f"reads, {f.rate / 1e6:.1f} MB/s; verification {f.verify_cpu:.3f} "
                        f"CPU s, tier writes {f.write_seconds:.3f} s")
        if self.cpu is not None:
            user, system = self.cpu
            rows.append(f"process CPU to first token: {user + system:.3f} s (user {user:.3f}, "
                        f"system {system:.3f})")
        return "\n".join(rows)

    def _ordered(self) -> list[tuple[str, tuple[float, float]]]:
        known = [(n, self.spans[n]) for n in PHASES if n in self.spans]
        return known + [(n, s) for n, s in self.spans.items() if n not in PHASES]
