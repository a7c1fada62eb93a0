"""Terminal output for the `strato` CLI: sizes, tables and the progress bar.

Kept apart from the commands so both cli.py and cli_registry.py render the same way.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence


def local_models(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a cache report into one row per (model, tier)."""
    rows = []
    for tier in report.get("tiers", []):
        for entry in tier.get("models", tier.get("entries", [])):
            rows.append({"model": entry.get("name") or entry.get("model") or "?",
                         "tier": tier.get("name") or tier.get("kind") or "?",
                         "size": human_size(entry.get("size", entry.get("size_bytes", 0))),
                         "digest": str(entry.get("digest", ""))[:19]})
    return rows


def human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths))
              for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# --- registry and local store: push, pull, list --remote, rm, cache -------------------


class ProgressBar:
    """One self-rewriting stderr line: bytes, percent, MB/s, ETA (plain text when piped)."""

    def __init__(self, label: str) -> None:
        import time

        self.label, self.start, self.last, self.clock = label, time.monotonic(), 0.0, time
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int, phase: str = "", rate: float | None = None
                 ) -> None:
        now = self.clock.monotonic()
        if done < total and now - self.last < (0.1 if self.tty else 2.0):
            return
        self.last = now
        rate = rate if rate is not None else done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        pct = 100.0 * done / total if total else 100.0
        width = 24
        filled = int(width * pct / 100)
        line = (f"{self.label} {phase} [{'#' * filled}{'.' * (width - filled)}] "
                f"{pct:5.1f}% {human_size(done)}/{human_size(total)} "
                f"{rate / 1e6:.1f} MB/s eta {eta:.0f}s")
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
