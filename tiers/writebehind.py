"""Write-behind: fill a slower tier from the same stream without slowing the fast one.

When a load targets RAM and disk (or EFS) at once, the request waits only for RAM. Each
slower tier gets a `WriteBehind`: verified chunks are offered to a bounded queue that
its own thread drains into the tier's writer. If the disk falls behind and the queue is
full, the chunk is not waited for: it is noted as missing and copied from the fast
tier afterwards. So chunks land in every tier at once when the disks keep up, a slow
disk never throttles the download, and a kill -9 still leaves a resumable partial.

A cold start may hold the copies altogether (`hold`, set by the model manager once the
engine is built): measured on the 2-vCPU benchmark with a 2.4 GB model, writing the disk
copy during the fetch and the llama.cpp build made the first token come 1.7x later
(page-cache copies, dirty-page writeback and memory bandwidth taken from the fetch and
the repack). Held chunks are copied from the fast tier afterwards, like skipped ones; the
price is that a process killed during such a load leaves no partial on disk.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable, Mapping

from tiers.base import TierWriter

log = logging.getLogger("strato.tiers")
_STOP = None
BACKGROUND_NICE = 10


def run_in_background_priority() -> None:
    """Lower the calling thread's CPU priority to nice 10 (Linux: per thread).

    Copies into slower tiers are for the *next* instance; on a 2-vCPU function they
    would otherwise take CPU from the fetch, verification and load that the current
    request waits for. Nice 10 is a bounded share (about a tenth of a core against a
    busy nice-0 thread), so the copy always finishes, however busy the machine is.
    SCHED_IDLE, used before, gets no CPU at all while other threads are runnable: on a
    server busy on every core a copy never finished, and a second instance (or a test)
    found no disk copy. Best effort: elsewhere the default priority stays.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError):
        pass


class WriteBehind:
    """A TierWriter facade whose `write_at` never blocks on the underlying writer."""

    def __init__(self, writer: TierWriter, name: str, depth: int = 8,
                 hold: threading.Event | None = None) -> None:
        self.writer = writer
        self.name = name
        self.hold = hold          # unset: chunks are not written now, only noted
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=depth)
        self._missing: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._aborted = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=f"strato-wb-{name}",
                                        daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        run_in_background_priority()
        while (item := self._queue.get()) is not _STOP:
            if self.error is not None or self._aborted:
                continue
            try:
                self.writer.write_at(*item)
            except BaseException as exc:  # reported by finish()
                self.error = exc

    # -- the TierWriter side the fetch sees ------------------------------------------------

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Queue a chunk, or note it to copy from the fast tier at `finish`: while the
        copies are held, when the queue is full, and when `data` is a view into the fast
        tier's own memory (a fetch that read in place: the bytes are there already, and a
        queued view would keep that memory mapped writable, which its seal refuses)."""
        if isinstance(data, memoryview) or (self.hold is not None and not self.hold.is_set()):
            with self._lock:
                self._missing.append((offset, len(data)))
            return
        try:
            self._queue.put_nowait((offset, data))
        except queue.Full:
            with self._lock:
                self._missing.append((offset, len(data)))

    def read_at(self, offset: int, length: int) -> bytes:
        return self.writer.read_at(offset, length)

    def resumed_bytes(self) -> int:
        return self.writer.resumed_bytes()

    # -- completion ---------------------------------------------------------------------------

    def finish(self, read_fast: Callable[[int, int], bytes], digest: str,
               meta: Mapping[str, Any]) -> None:
        """Drain the queue, copy the chunks that were skipped from the fast tier, commit.

        Runs in the background after the fast tier is serving, once `hold` (if any) is
        set; raises what the writer raised (DiskFull, ...) after aborting it, so the
        caller can log it.
        """
        if self.hold is not None:
            self.hold.wait()
        self._queue.put(_STOP)
        self._thread.join()
        try:
            if self.error is not None:
                raise self.error
            for offset, length in self._missing:
                self.writer.write_at(offset, read_fast(offset, length))
            self.writer.commit(digest, meta)
        except BaseException:
            self.writer.abort()
            raise

    def commit(self, digest: str, meta: Mapping[str, Any] | None = None) -> None:
        raise RuntimeError("a write-behind writer is committed with finish()")

    def abort(self) -> None:
        self._aborted = True
        self._queue.put(_STOP)
        self._thread.join()
        self.writer.abort()

    @property
    def skipped(self) -> int:
        """Chunks that did not fit the queue and will be copied from the fast tier."""
        with self._lock:
            return len(self._missing)
