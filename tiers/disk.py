"""A directory tier (local NVMe, /tmp, or EFS shared by many instances).

Layout under the tier's root:

    blobs/<hex>.gguf               a verified model, named by its BLAKE3
    blobs/<hex>.json               its metadata (source URL, size, ETag, GGUF summary)
    blobs/<key>.<pid>-<n>.partial  a blob being written by one process (flock held)
    locks/<hash>.lock              held (flock) by the one process fetching a model
    policy.json                    promotion statistics (tiers/policy.py)

Guarantees: a reader only ever opens `<hex>.gguf`, which appears by an atomic rename
after every byte was verified and fsynced, so a crash or kill -9 at any moment leaves at
most a `.partial`. A writer holds an exclusive flock on its partial for its whole life;
the kernel drops it when the process dies, which is how a later process tells an
abandoned partial (adopt it and resume) from a live one (leave it alone). Two processes
racing on one blob each write their own partial and the first rename wins; the other
drops its copy; to avoid even that, the loader fetches under `fetch_lock`: N processes
asking for one model at once (Lambda Managed Instances' workers, containers sharing a
volume, instances sharing EFS) make one fetch, and the others wait on the lock, then
find and open the committed blob. Eviction is LRU by the blob's mtime (set on every access, shared by all
processes on the filesystem) and never touches a blob pinned by this process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from tiers.base import PinCounts, TierEntry, normalize_digest
from tiers.errors import DiskFull, TierFull

_FULL = (errno.ENOSPC, errno.EDQUOT)
_seq = itertools.count()
# Partials this process is writing. On NFS (EFS) flock is emulated with POSIX locks,
# which a process drops when it closes *any* descriptor of the file, so we must never
# probe our own live partials by opening them.
_live: set[str] = set()


class DiskTier:
    kind = "disk"
    persistent = True

    def __init__(self, root: str | os.PathLike[str], capacity: int,
                 name: str | None = None) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.name = name or f"disk:{self.root}"
        self.on_evict: Callable[[str], None] | None = None
        self._lock = threading.RLock()
        self._pins = PinCounts(self._lock)

    def close(self) -> None:
        """Nothing is held open between calls: files are opened per read and write."""

    # -- reading -----------------------------------------------------------------------

    def _blob(self, digest: str) -> Path:
        return self.blobs / f"{normalize_digest(digest)}.gguf"

    def _meta_path(self, digest: str) -> Path:
        return self.blobs / f"{normalize_digest(digest)}.json"

    def contains(self, digest: str) -> bool:
        return self._blob(digest).is_file()

    def path(self, digest: str) -> str:
        blob = self._blob(digest)
        try:
            os.utime(blob)            # the LRU clock, visible to every process
        except FileNotFoundError:
            raise KeyError(digest) from None
        return str(blob)

    def size_of(self, digest: str) -> int:
        return self._blob(digest).stat().st_size

    def meta(self, digest: str) -> dict[str, Any]:
        try:
            return json.loads(self._meta_path(digest).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def entries(self) -> list[TierEntry]:
        out = []
        for blob in self.blobs.glob("*.gguf"):
            try:
                st = blob.stat()
            except FileNotFoundError:
                continue                   # evicted by another process meanwhile
            digest = blob.stem
            out.append(TierEntry(digest, st.st_size, st.st_mtime, self._pins.pinned(digest),
                                 self.meta(digest)))
        return sorted(out, key=lambda e: e.last_access)

    def usage(self) -> int:
        total = 0
        for f in itertools.chain(self.blobs.glob("*.gguf"), self.blobs.glob("*.partial")):
            try:
                total += f.stat().st_size
            except FileNotFoundError:
                pass
        return total

    # -- pins and eviction ---------------------------------------------------------------

    def pin(self, digest: str) -> None:
        self._pins.pin(digest)

    def unpin(self, digest: str) -> None:
        self._pins.unpin(digest)

    def evict(self, digest: str) -> bool:
        with self._lock:
            d = normalize_digest(digest)
            if self._pins.pinned(d):
                return False
            try:
                self._blob(d).unlink()
            except FileNotFoundError:
                return False
            self._meta_path(d).unlink(missing_ok=True)
        if self.on_evict is not None:
            self.on_evict(d)
        return True

    def make_room(self, size: int, keep: str | None = None) -> None:
        """Evict least-recently-used unpinned blobs until `size` more bytes fit.

        Abandoned partials go first (they are not models; the one of `keep`, about to
        be resumed, stays); raises TierFull when what
        remains pinned or in flight leaves too little room.
        """
        if size > self.capacity:
            raise TierFull(f"{self.name}: a blob of {size} bytes exceeds the capacity "
                           f"of {self.capacity}")
        with self._lock:
            if self.usage() + size <= self.capacity:
                return
            for partial in self.blobs.glob("*.partial"):
                if (keep is None or not partial.name.startswith(f"{keep}.")) \
                        and _abandoned(partial):
                    partial.unlink(missing_ok=True)
            for entry in self.entries():
                if self.usage() + size <= self.capacity:
                    return
                if not entry.pinned:
                    self.evict(entry.digest)
            used = self.usage()
            if used + size > self.capacity:
                raise TierFull(f"{self.name}: needs {size} bytes, {self.capacity - used} "
                               "free and the rest is in use")

    # -- one fetch across processes ---------------------------------------------------------

    @contextlib.contextmanager
    def fetch_lock(self, key: str) -> Iterator[None]:
        """Hold this tier's cross-process lock for `key` (a digest or a URL).

        flock on a small file per key: blocking, released by the kernel if the holder
        dies, and emulated with POSIX locks over NFS (EFS), which works across
        machines. Lock files are never unlinked (unlinking would let two processes hold
        locks on two different inodes of one name); they are empty.
        """
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        name = hashlib.blake2b(key.encode(), digest_size=20).hexdigest()
        fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------------

    def begin_write(self, key: str, size: int, resume: bool = False) -> "DiskWriter":
        # An abandoned partial of the same blob is adopted or replaced, so its bytes
        # are already counted in usage() and must not be reserved twice.
        if size > self.capacity:
            self.make_room(size)                        # raises TierFull with the reason
        stale = 0
        for partial in self.blobs.glob(f"{key}.*.partial"):
            try:
                stale += partial.stat().st_size if _abandoned(partial) else 0
            except FileNotFoundError:
                pass
        self.make_room(max(0, size - stale), keep=key if resume else None)
        return DiskWriter(self, key, size, resume)


@contextlib.contextmanager
def fetch_lock(tiers: Sequence[Any], key: str) -> Iterator[None]:
    """Every disk tier's `fetch_lock` for `key`, in tier order (the same in every process
    configured alike, so two processes never wait on each other in a cycle)."""
    with contextlib.ExitStack() as stack:
        for tier in tiers:
            if isinstance(tier, DiskTier):
                stack.enter_context(tier.fetch_lock(key))
        yield


def _abandoned(partial: Path) -> bool:
    """True when no live process holds the partial's lock."""
    if str(partial) in _live:
        return False
    try:
        fd = os.open(partial, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class DiskWriter:
    """One blob being written into a DiskTier; see the module docstring for the steps."""

    def __init__(self, tier: DiskTier, key: str, size: int, resume: bool) -> None:
        self.tier, self.key, self.size = tier, key, size
        self.partial = tier.blobs / f"{key}.{os.getpid()}-{next(_seq)}.partial"
        self._resumed = 0
        self.fd = self._adopt() if resume else None
        for stale in tier.blobs.glob(f"{key}.*.partial"):
            if stale != self.partial and _abandoned(stale):
                stale.unlink(missing_ok=True)
        if self.fd is None:
            self.fd = self._create()
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            self.abort()
            if exc.errno in _FULL:
                raise DiskFull(f"{tier.name}: no space for {size} bytes ({exc})") from exc
            raise

    def _adopt(self) -> int | None:
        """Take over an abandoned partial of the same key, if there is one.

        Steps: open it, take its lock without waiting (a live writer keeps it), check
        the name still refers to the locked inode (it may have been renamed meanwhile),
        rename it to our own name while holding the lock.
        """
        for candidate in self.tier.blobs.glob(f"{self.key}.*.partial"):
            if str(candidate) in _live:
                continue
            try:
                fd = os.open(candidate, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(candidate).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError(candidate)
                _live.add(str(self.partial))
                os.rename(candidate, self.partial)
            except (BlockingIOError, FileNotFoundError):
                _live.discard(str(self.partial))
                os.close(fd)
                continue
            self._resumed = os.fstat(fd).st_size
            return fd
        return None

    def _create(self) -> int:
        """Create and lock our partial; retry if another process's clean-up unlinked it
        in the instant between creating and locking."""
        while True:
            _live.add(str(self.partial))
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                if os.stat(self.partial).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
            _live.discard(str(self.partial))
            self.partial = self.tier.blobs / f"{self.key}.{os.getpid()}-{next(_seq)}.partial"

    def resumed_bytes(self) -> int:
        return self._resumed

    def write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            if exc.errno in _FULL:
                raise DiskFull(f"{self.tier.name}: disk full while writing {self.key}") from exc
            raise

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def commit(self, digest: str, meta: Mapping[str, Any] | None = None) -> None:
        """fsync the bytes, write the metadata, then rename into place (atomic).

        The metadata goes first so a visible blob always has it; a metadata file without
        its blob is ignored by readers. If another process committed the same digest
        first, our identical copy is dropped and theirs stays.
        """
        digest = normalize_digest(digest)
        if os.fstat(self.fd).st_size != self.size:
            raise DiskFull(f"{self.tier.name}: {self.key} has the wrong size on disk")
        os.fsync(self.fd)
        final = self.tier._blob(digest)
        meta_path = self.tier._meta_path(digest)
        tmp = meta_path.with_name(f"{meta_path.name}.{os.getpid()}-{next(_seq)}.partial")
        try:
            tmp.write_text(json.dumps(dict(meta or {}), sort_keys=True, default=str))
            os.replace(tmp, meta_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _FULL:
                raise DiskFull(f"{self.tier.name}: disk full writing metadata") from exc
            raise
        if final.exists():
            self.abort()
        else:
            os.rename(self.partial, final)
            _fsync_dir(self.tier.blobs)
            os.close(self.fd)
            self.fd = None
            _live.discard(str(self.partial))
        os.utime(final, (time.time(), time.time()))

    def abort(self) -> None:
        """Drop the partial (idempotent)."""
        if self.fd is not None:
            self.partial.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
            _live.discard(str(self.partial))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
