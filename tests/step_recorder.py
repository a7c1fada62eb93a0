"""`StepRecorder`: what a test wants to know about scheduler steps, kept by the test.

The scheduler keeps no history (no per-sequence step lists, no trace, no counters that
only tests read); it publishes a `StepReport` per pass to its subscribers. Reports are
published before the tokens of their step are emitted, so once a test has read a
stream's last event, every report that stream took part in is here.
"""

from __future__ import annotations

import threading
from types import TracebackType

from core.engine.scheduler import Scheduler, Sequence, StepReport


class StepRecorder:
    """Subscribes to a scheduler while the `with` block runs and indexes its reports."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._reports: list[StepReport] = []

    def __enter__(self) -> StepRecorder:
        self._scheduler.subscribe(self._record)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._scheduler.unsubscribe(self._record)

    def _record(self, report: StepReport) -> None:
        with self._lock:
            self._reports.append(report)

    @property
    def reports(self) -> list[StepReport]:
        with self._lock:
            return list(self._reports)

    def token_steps(self, seq: Sequence) -> list[int]:
        """The steps in which `seq` was sampled (got a token)."""
        return [r.decoded_at for r in self.reports if r.decoded_at is not None
                and any(c.seq is seq and c.logits for c in r.plan.batch)]

    def admitted_at(self, seq: Sequence) -> int | None:
        """The step counter when `seq` was last admitted into a slot."""
        steps = [r.planned_at for r in self.reports if any(a.seq is seq for a in r.plan.admit)]
        return steps[-1] if steps else None

    def dropped_at(self, seq: Sequence) -> int | None:
        """The step counter when a cancelled `seq` was dropped."""
        steps = [r.planned_at for r in self.reports if any(s is seq for s in r.plan.drop)]
        return steps[-1] if steps else None

    def decoded(self) -> dict[int, StepReport]:
        """Every decoded step by number."""
        return {r.decoded_at: r for r in self.reports if r.decoded_at is not None}

    @property
    def preemptions(self) -> int:
        return sum(len(r.preempted) for r in self.reports)
