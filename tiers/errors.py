"""Storage errors. `tiers/` cannot import `core/`, so its failures are typed here;
`core/errors.py` re-exports them and `handlers/` maps both to HTTP in one table."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every failure in tiers/."""


class ObjectNotFound(StorageError):
    """The remote object (or manifest) does not exist."""


class SourceUnavailable(StorageError):
    """The remote kept failing after bounded retries (network, 5xx, cut connections)."""

    @classmethod
    def range_ignored(cls, where: str, size: int, room: int) -> SourceUnavailable:
        """A ranged read answered with more bytes than asked for (`room`): the store
        ignored the Range."""
        return cls(f"{where}: {size} bytes answered for a read of {room}")


class IntegrityError(StorageError):
    """Bytes did not match their BLAKE3 digest (a chunk, or the whole blob)."""


class CorruptModel(StorageError):
    """The bytes are not a usable GGUF (bad magic, truncated header or tensor data)."""


class TierFull(StorageError):
    """A tier cannot make room (capacity too small, or everything in it is in use)."""


class DiskFull(StorageError):
    """The filesystem under a disk tier ran out of space (ENOSPC) while writing."""


class AddressRefused(StorageError):
    """A URL a caller named connected (after DNS or a redirect) to a local, link-local
    or private address that the operator did not list: the caller's error, never
    retried."""

    param = "model"


class TransientError(SourceUnavailable):
    """One remote call failed in a way worth retrying (network error, 5xx, cut stream).

    tiers/remote.py raises it; the loader retries with backoff and, when retries run
    out, raises SourceUnavailable naming the source and the last cause."""
