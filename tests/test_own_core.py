"""core.engine.own_core: while a build runs, the process's other threads keep off one CPU,
and get back exactly what they had when it is released."""

from __future__ import annotations

import os
import threading
from typing import Callable

import pytest

from core.engine.own_core import OwnCore

CPUS = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="one CPU: nothing to keep free")


class Parked:
    """A thread that waits until told to run `job` (on itself) or to end."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], object]] = []
        self.results: list[object] = []
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self.tid = self.run(threading.get_native_id)

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self.jobs)
                job = self.jobs.pop(0)
            if job is None:
                return
            result = job()
            with self._wake:
                self.results.append(result)
                self._wake.notify_all()

    def run(self, job: Callable[[], object]) -> object:
        with self._wake:
            self.jobs.append(job)
            self._wake.notify_all()
            self._wake.wait_for(lambda: self.results)
            return self.results.pop(0)

    def stop(self) -> None:
        with self._wake:
            self.jobs.append(None)  # type: ignore[arg-type]
            self._wake.notify_all()
        self._thread.join()


@pytest.fixture
def parked():
    thread = Parked()
    yield thread
    thread.stop()


@needs_two
def test_other_threads_keep_off_one_cpu_until_released(parked) -> None:
    before = os.sched_getaffinity(parked.tid)
    with OwnCore() as core:
        assert core.cpu in CPUS
        assert os.sched_getaffinity(parked.tid) == before - {core.cpu}
        assert os.sched_getaffinity(0) == CPUS            # the building thread keeps all
        # A thread started meanwhile inherits the narrower set ...
        child = parked.run(Parked)
        assert core.cpu not in os.sched_getaffinity(child.tid)
        kept = core.cpu
        core.release()
        assert core.cpu is None
        # ... and gets the building thread's CPUs back with the rest.
        assert os.sched_getaffinity(parked.tid) == before
        assert kept in os.sched_getaffinity(child.tid)
        child.stop()
    assert os.sched_getaffinity(parked.tid) == before    # leaving after release: no-op


@needs_two
def test_leaving_releases_even_when_the_build_fails(parked) -> None:
    with pytest.raises(RuntimeError):
        with OwnCore() as core:
            assert core.cpu not in os.sched_getaffinity(parked.tid)
            raise RuntimeError("llama.cpp refused the model")
    assert os.sched_getaffinity(parked.tid) == CPUS


@needs_two
def test_a_thread_that_kept_off_that_cpu_before_is_left_as_it_was(parked) -> None:
    narrow = CPUS - {max(CPUS)}
    os.sched_setaffinity(parked.tid, narrow)
    with OwnCore() as core:
        assert core.cpu == max(CPUS)
    assert os.sched_getaffinity(parked.tid) == narrow    # not widened to every CPU


def test_disabled_or_one_cpu_changes_nothing(parked) -> None:
    with OwnCore(enabled=False) as core:
        assert core.cpu is None
        assert os.sched_getaffinity(parked.tid) == CPUS
    one = {min(CPUS)}
    os.sched_setaffinity(0, one)          # the building thread may use one CPU only
    try:
        with OwnCore() as core:
            assert core.cpu is None
            assert os.sched_getaffinity(parked.tid) == CPUS
    finally:
        os.sched_setaffinity(0, CPUS)
