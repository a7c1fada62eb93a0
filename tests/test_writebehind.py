"""Write-behind into a slower tier: chunks it could not take in time come from the fast copy."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.tiny_gguf import digest
from tiers.disk import DiskTier
from tiers.writebehind import WriteBehind

DATA = bytes(range(256)) * 64            # 16 KiB, 16 chunks of 1 KiB


class Gated:
    """A real disk writer whose first write waits for a gate (a disk that stalls)."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate

    def write_at(self, offset: int, data: bytes) -> None:
        self.gate.wait(10)
        self.inner.write_at(offset, data)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_a_stalled_disk_gets_the_skipped_chunks_from_the_fast_copy(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    d = digest(DATA)
    gate = threading.Event()
    sink = WriteBehind(Gated(tier.begin_write(d, len(DATA)), gate), tier.name, depth=2)
    for off in range(0, len(DATA), 1024):
        sink.write_at(off, DATA[off:off + 1024])     # never blocks, even while stalled
    assert sink.skipped >= 16 - 3                    # one in the writer, two queued
    gate.set()
    sink.finish(lambda off, n: DATA[off:off + n], d, {"source": "test"})
    assert Path(tier.path(d)).read_bytes() == DATA
    assert not list(tier.blobs.glob("*.partial"))


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    sink = WriteBehind(tier.begin_write(digest(DATA), len(DATA)), tier.name)
    sink.write_at(0, DATA[:1024])
    sink.abort()
    assert list(tier.blobs.iterdir()) == []


def test_the_drain_runs_at_a_bounded_priority_not_sched_idle(tmp_path: Path) -> None:
    """SCHED_IDLE gets no CPU while any other thread is runnable: on a machine busy on
    every core the copy never finished. Nice 10 is a bounded share that always does."""
    import os

    tier = DiskTier(tmp_path, 1 << 20)
    gate = threading.Event()
    seen: list[tuple[int, int]] = []

    class Observed(Gated):
        def write_at(self, offset: int, data: bytes) -> None:   # on the drain thread
            tid = threading.get_native_id()
            seen.append((os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)))
            super().write_at(offset, data)

    d = digest(DATA)
    sink = WriteBehind(Observed(tier.begin_write(d, len(DATA)), gate), tier.name)
    for off in range(0, len(DATA), 1024):
        sink.write_at(off, DATA[off:off + 1024])
    gate.set()
    sink.finish(lambda off, n: DATA[off:off + n], d, {"source": "test"})
    (policy, nice), *_ = seen          # the first write is the drain thread's
    assert policy != os.SCHED_IDLE and nice == 10
    assert Path(tier.path(d)).read_bytes() == DATA


def test_held_copies_write_nothing_until_released_then_copy_from_the_fast_tier(
        tmp_path: Path) -> None:
    """A cold load holds the copy (the model manager releases it once the engine is
    built): while held no chunk reaches the disk writer; released, finish() copies
    every chunk from the fast tier and commits."""
    tier = DiskTier(tmp_path, 1 << 20)
    d = digest(DATA)
    written: list[int] = []

    class Counted(Gated):
        def write_at(self, offset: int, data: bytes) -> None:
            written.append(offset)
            self.inner.write_at(offset, data)

    hold = threading.Event()
    sink = WriteBehind(Counted(tier.begin_write(d, len(DATA)), hold), tier.name, hold=hold)
    for off in range(0, len(DATA), 1024):
        sink.write_at(off, DATA[off:off + 1024])
    assert sink.skipped == 16 and written == []
    finishing = threading.Thread(
        target=sink.finish, args=(lambda off, n: DATA[off:off + n], d, {"source": "test"}))
    finishing.start()
    assert not tier.contains(d)                       # finish() waits for the release
    hold.set()
    finishing.join()
    assert sorted(written) == list(range(0, len(DATA), 1024))
    assert Path(tier.path(d)).read_bytes() == DATA
