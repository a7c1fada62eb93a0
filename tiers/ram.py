"""The RAM tier: model bytes in anonymous memory files (`os.memfd_create`).

llama.cpp is handed `/proc/self/fd/N`; it opens and mmaps that like any file, so a RAM
hit loads with no disk read and no copy, and swapping between two models held here
never touches the remote. A committed blob is sealed (no write, grow or shrink), so the
bytes llama.cpp maps are exactly the bytes that were verified. Eviction closes the
descriptor; the kernel frees the pages once llama.cpp has unmapped them too.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import logging
import mmap
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from tiers.base import PinCounts, TierEntry, normalize_digest
from tiers.errors import TierFull

log = logging.getLogger("strato.tiers")
_SEALS = (fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)


@dataclass
class _Blob:
    fd: int
    size: int
    last_access: float
    meta: dict[str, Any] = field(default_factory=dict)


class RamTier:
    kind = "ram"
    persistent = False
    root: Path | None = None   # memfds only: nothing on a filesystem

    def __init__(self, capacity: int, name: str = "ram") -> None:
        self.capacity = capacity
        self.name = name
        self.on_evict: Callable[[str], None] | None = None
        self._blobs: dict[str, _Blob] = {}
        self._reserved = 0              # bytes promised to writers still in flight
        self._lock = threading.RLock()
        self._pins = PinCounts(self._lock)

    def contains(self, digest: str) -> bool:
        return normalize_digest(digest) in self._blobs

    def path(self, digest: str) -> str:
        with self._lock:
            blob = self._blobs[normalize_digest(digest)]
            blob.last_access = time.time()
            return f"/proc/self/fd/{blob.fd}"

    def size_of(self, digest: str) -> int:
        return self._blobs[normalize_digest(digest)].size

    def meta(self, digest: str) -> dict[str, Any]:
        blob = self._blobs.get(normalize_digest(digest))
        return dict(blob.meta) if blob else {}

    def entries(self) -> list[TierEntry]:
        with self._lock:
            return sorted((TierEntry(d, b.size, b.last_access, self._pins.pinned(d), dict(b.meta))
                           for d, b in self._blobs.items()), key=lambda e: e.last_access)

    def usage(self) -> int:
        with self._lock:
            return sum(b.size for b in self._blobs.values()) + self._reserved

    def pin(self, digest: str) -> None:
        self._pins.pin(digest)

    def unpin(self, digest: str) -> None:
        self._pins.unpin(digest)

    def evict(self, digest: str) -> bool:
        with self._lock:
            d = normalize_digest(digest)
            if self._pins.pinned(d) or d not in self._blobs:
                return False
            os.close(self._blobs.pop(d).fd)
        if self.on_evict is not None:
            self.on_evict(d)
        return True

    def close(self) -> None:
        """Release every blob (process shutdown); pins no longer matter then."""
        with self._lock:
            for blob in self._blobs.values():
                os.close(blob.fd)
            self._blobs.clear()

    def begin_write(self, key: str, size: int, resume: bool = False) -> "RamWriter":
        """Reserve `size` bytes (evicting LRU unpinned blobs) and open a memfd for them.

        RAM does not survive the process, so there is never anything to resume.
        """
        with self._lock:
            if size > self.capacity:
                raise TierFull(f"{self.name}: a blob of {size} bytes exceeds the capacity "
                               f"of {self.capacity}")
            for entry in self.entries():
                if self.usage() + size <= self.capacity:
                    break
                if not entry.pinned:
                    self.evict(entry.digest)
            if self.usage() + size > self.capacity:
                raise TierFull(f"{self.name}: needs {size} bytes, "
                               f"{self.capacity - self.usage()} free and the rest is in use")
            self._reserved += size
        try:
            fd = os.memfd_create(f"strato-{key[:24]}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, size)
        except OSError as exc:
            self._unreserve(size)
            raise TierFull(f"{self.name}: cannot allocate {size} bytes: {exc}") from exc
        return RamWriter(self, fd, size)

    def _unreserve(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    def _adopt(self, digest: str, fd: int, size: int, meta: Mapping[str, Any]) -> bool:
        with self._lock:
            self._reserved -= size
            if digest in self._blobs:
                return False
            self._blobs[digest] = _Blob(fd, size, time.time(), dict(meta))
            return True


class RamWriter:
    """A memfd being filled; sealed and registered on commit, closed on abort.

    Chunks arrive through `write_at` (a copy) or in place: `buffer` hands out the memfd's
    own memory, mapped writable, and a fetch reads the network's bytes straight into it
    (one copy less per byte, and no writer waits for the memfd's inode lock, which every
    `pwrite` takes: 16 streams' pwrites ran one at a time). The mapping is dropped before
    the seal, which refuses a file that is still mapped writable.
    """

    def __init__(self, tier: RamTier, fd: int, size: int) -> None:
        self.tier, self.fd, self.size = tier, fd, size
        self._map: mmap.mmap | None = None
        self._map_lock = threading.Lock()

    def resumed_bytes(self) -> int:
        return 0

    def write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                raise TierFull(f"{self.tier.name}: out of memory while writing") from exc
            raise

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def buffer(self, offset: int, length: int) -> memoryview:
        """Bytes [offset, offset + length) of the blob as writable memory: what is
        written there is the blob. Drop the view before `commit`."""
        if not 0 <= offset <= offset + length <= self.size:
            raise ValueError(f"bytes {offset}-{offset + length} are outside a blob of "
                             f"{self.size}")
        with self._map_lock:
            if self._map is None:
                self._map = mmap.mmap(self.fd, self.size)
            return memoryview(self._map)[offset:offset + length]

    def _unmap(self) -> bool:
        """Drop the writable mapping; False when a view into it is still alive (kept by
        a reference cycle past one garbage collection, or by something holding on to
        a traceback): the mapping then goes when the last view does."""
        with self._map_lock:
            if self._map is None:
                return True
            try:
                self._map.close()
            except BufferError:
                gc.collect()
                try:
                    self._map.close()
                except BufferError:
                    self._map = None
                    return False
            self._map = None
            return True

    def share(self) -> int:
        """A duplicate descriptor of the memfd being filled (for an early model build,
        tiers.gate.EarlyBlob); the caller closes it. The blob is the same memory, so
        the build sees every chunk written later, at its offset, without a copy."""
        return os.dup(self.fd)

    def commit(self, digest: str, meta: Mapping[str, Any] | None = None) -> None:
        if self._unmap():
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
        else:   # still mapped writable somewhere in this process: sealed but for writes
            log.warning("%s: a view of blob %s outlived its fetch; sealed against "
                        "resizing only", self.tier.name, digest)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS & ~fcntl.F_SEAL_WRITE)
        fd, self.fd = self.fd, None
        if not self.tier._adopt(normalize_digest(digest), fd, self.size, meta or {}):
            os.close(fd)              # an identical blob was committed meanwhile

    def abort(self) -> None:
        self._unmap()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.tier._unreserve(self.size)
