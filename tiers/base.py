"""The storage vocabulary: what a tier is, and what the loader is asked to fetch.

A tier is a small protocol (`Tier`) that each storage kind implements (disk directory,
RAM memfd); the loader composes tiers fastest-first, like fsspec composes a cache over a
filesystem. The fetch plan (`BlobPlan`) is plain data so `core/` can convert its manifest
into it without `tiers/` knowing what a manifest is.

Digests are lowercase BLAKE3 hex strings everywhere in tiers/; a `blake3:` prefix is
accepted on input and stripped, because that is how manifests and references spell them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

Compression = Literal["none", "zstd"]
_HEX = set("0123456789abcdef")


def normalize_digest(digest: str) -> str:
    """'blake3:ABC…' -> 'abc…'; refuses anything that is not 64 hex digits.

    Digests become file names in disk tiers, so a malformed one must never get that far.
    """
    text = digest.strip().lower()
    if text.startswith("blake3:"):
        text = text[len("blake3:"):]
    if len(text) != 64 or not set(text) <= _HEX:
        raise ValueError(f"not a BLAKE3 hex digest: {digest!r}")
    return text


@dataclass(frozen=True)
class BlobPlan:
    """Everything the loader needs to fetch one GGUF blob.

    - `url`: the remote object with the bytes (s3://, gs://, az://, https://, file://,
      or a plain path). With `compression="zstd"` it holds one zstd frame per chunk.
    - `size`: raw (decompressed) size in bytes; None for a plain URI (the loader asks
      the remote).
    - `digest`: BLAKE3 of the raw bytes; None for a plain URI (the loader hashes what it
      streamed and stores the blob under the result).
    - `chunk_size`: raw bytes per chunk; also the size of one ranged read.
    - `chunk_digests`: BLAKE3 of each raw chunk, in offset order; None = verify only the
      whole blob at the end (a bad chunk is then detected but cannot be located).
    - `frame_offsets`: for zstd, offset of each compressed frame in the object plus the
      end offset (len = n_chunks + 1).
    - `order`: chunk indices in fetch order (header first, then layers); None = by offset.
    - `header_chunks`: how many leading chunks hold the GGUF header (1 when unknown):
      they are fetched as one read of their own, so the header never waits on layers.
    - `name`: what logs and metrics call it (the user's reference).
    - `meta`: small JSON-able dict stored beside the blob in disk tiers (the manifest's
      GGUF summary, for `strato list` without reading the blob).
    """

    url: str
    size: int | None = None
    digest: str | None = None
    chunk_size: int = 8 << 20
    chunk_digests: tuple[str, ...] | None = None
    compression: Compression = "none"
    frame_offsets: tuple[int, ...] | None = None
    order: tuple[int, ...] | None = None
    header_chunks: int = 1
    name: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.digest is not None:
            object.__setattr__(self, "digest", normalize_digest(self.digest))
        if self.chunk_digests is not None:
            object.__setattr__(self, "chunk_digests",
                               tuple(normalize_digest(d) for d in self.chunk_digests))
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.compression not in ("none", "zstd"):
            raise ValueError(f"unknown compression {self.compression!r}")
        if self.compression == "zstd":
            if self.size is None or self.frame_offsets is None:
                raise ValueError("zstd plans need size and frame_offsets")
            if len(self.frame_offsets) != n_chunks(self.size, self.chunk_size) + 1:
                raise ValueError("frame_offsets must have n_chunks + 1 entries")
        if self.chunk_digests is not None and self.size is not None:
            if len(self.chunk_digests) != n_chunks(self.size, self.chunk_size):
                raise ValueError("chunk_digests must have one entry per chunk")

    @property
    def label(self) -> str:
        return self.name or self.url


def n_chunks(size: int, chunk_size: int) -> int:
    """Number of chunks covering `size` bytes (an empty blob still has none)."""
    return (size + chunk_size - 1) // chunk_size


def chunk_range(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """[start, end) of raw chunk `index`."""
    start = index * chunk_size
    return start, min(start + chunk_size, size)


@dataclass(frozen=True)
class TierEntry:
    """One blob held by a tier, for `/v1/cache` and `strato cache`."""

    digest: str
    size: int
    last_access: float
    pinned: bool
    meta: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class TierWriter(Protocol):
    """An in-progress blob in one tier. Chunks arrive in any order.

    Invariants: nothing a writer does is visible through `Tier.contains`/`Tier.path`
    until `commit`; `abort` (or a crash) leaves nothing that looks like a model.

    A writer whose blob is memory may also offer `buffer(offset, length) -> memoryview`,
    the blob's own bytes, writable (tiers.ram.RamWriter): the fetch then reads into it
    in place instead of calling `write_at` (tiers.fetch.ChunkFetch.in_place).
    """

    def write_at(self, offset: int, data: bytes) -> None: ...

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes written so far (resume checks, hashing a plain URI after the fact)."""
        ...

    def resumed_bytes(self) -> int:
        """Size of data found from an abandoned earlier attempt (0 = fresh start).

        The loader re-verifies those chunks against their digests and skips the good ones.
        """
        ...

    def commit(self, digest: str, meta: Mapping[str, Any] | None = None) -> None:
        """Make the blob visible under `digest` (the bytes are already verified)."""
        ...

    def abort(self) -> None: ...


@runtime_checkable
class Tier(Protocol):
    """One local storage level. Fastest first in a list; the remote is never a Tier.

    `name` is what metrics and reports call it (`ram`, `disk:/tmp/strato`).
    `persistent` tiers survive the process (disk); policy stats live in the first one's
    `root`, the directory it keeps its files in (None for a tier without one, RAM).
    `on_evict`, when set (the loader sets it), is called with the digest of every blob
    the tier evicts, after the fact. Every method is thread-safe.
    """

    name: str
    kind: str
    capacity: int
    persistent: bool
    on_evict: Callable[[str], None] | None

    @property
    def root(self) -> Path | None:
        """The directory the tier keeps its files in; None for one without (RAM)."""
        ...

    def contains(self, digest: str) -> bool: ...

    def path(self, digest: str) -> str:
        """A path llama.cpp can open for this blob; counts as an access (LRU)."""
        ...

    def size_of(self, digest: str) -> int: ...

    def meta(self, digest: str) -> dict[str, Any]: ...

    def begin_write(self, key: str, size: int, resume: bool = False) -> TierWriter:
        """Start writing a blob of `size` bytes; makes room by LRU eviction first.

        `key` is the digest when known, else any stable id of the source (the writer is
        committed under the digest later). With `resume`, a persistent tier adopts the
        bytes of an abandoned earlier attempt at the same key (see `resumed_bytes`).
        Raises TierFull when `size` cannot fit, DiskFull when the filesystem is full.
        """
        ...

    def evict(self, digest: str) -> bool:
        """Drop one blob unless pinned; True if it was removed."""
        ...

    def usage(self) -> int: ...

    def pin(self, digest: str) -> None: ...

    def unpin(self, digest: str) -> None: ...

    def entries(self) -> list[TierEntry]: ...

    def close(self) -> None:
        """Release what the tier holds open (process shutdown). Blobs a persistent tier
        stored stay stored."""
        ...


EventSink = Callable[[str, str, float], None]
"""(kind, tier name, value): kind is 'hit', 'miss', 'bytes' or 'eviction'.

core/ wires this to its Prometheus counters; tiers/ never imports core."""


@dataclass
class TierCounters:
    hits: int = 0
    misses: int = 0
    bytes_written: int = 0
    evictions: int = 0


class TierStats:
    """Per-tier hits/misses/bytes/evictions, kept here and forwarded to a sink.

    Kept in-process as well as forwarded so `/v1/cache` can report counts without
    reading them back out of Prometheus.
    """

    def __init__(self, sink: EventSink | None = None) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, TierCounters] = {}
        self.sink = sink

    def record(self, kind: str, tier: str, value: float = 1) -> None:
        with self._lock:
            c = self._counters.setdefault(tier, TierCounters())
            if kind == "hit":
                c.hits += int(value)
            elif kind == "miss":
                c.misses += int(value)
            elif kind == "bytes":
                c.bytes_written += int(value)
            elif kind == "eviction":
                c.evictions += int(value)
            else:
                raise ValueError(f"unknown stats kind {kind!r}")
        if self.sink is not None:
            self.sink(kind, tier, value)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {t: vars(c).copy() for t, c in self._counters.items()}


def find_digests(tiers: Sequence[Tier], *, names: Collection[str] = (),
                 sources: Collection[str] = ()) -> list[str]:
    """Digests of the blobs stored under one of `names` (the reference a user gave) or
    fetched from one of `sources` (a plain URI), fastest tier first, each once.

    The metadata a tier keeps beside each blob is what lets a cached model be found
    without the registry or the remote: serving offline, `strato rm`, plain URIs.
    """
    names, sources = tuple(names), tuple(sources)
    found: dict[str, None] = {}
    for tier in tiers:
        for entry in tier.entries():
            if entry.meta.get("name") in names or entry.meta.get("source") in sources:
                found.setdefault(entry.digest)
    return list(found)


def describe(tiers: Sequence[Tier]) -> list[dict[str, Any]]:
    """Plain-data view of tiers for reports: name, kind, capacity, usage, entries."""
    return [{
        "name": t.name, "kind": t.kind, "capacity": t.capacity, "usage": t.usage(),
        "persistent": t.persistent,
        "entries": [{"digest": e.digest, "size": e.size, "last_access": e.last_access,
                     "pinned": e.pinned, "meta": dict(e.meta)} for e in t.entries()],
    } for t in tiers]


class PinCounts:
    """Reference counts of models in use, shared by every local tier.

    Eviction asks `pinned()` under the tier's own lock; a model is pinned once per
    loaded engine that reads from it, so two engines on one blob both keep it.
    """

    def __init__(self, lock: threading.Lock | threading.RLock) -> None:
        self._lock = lock
        self._counts: Counter[str] = Counter()

    def pin(self, digest: str) -> None:
        with self._lock:
            self._counts[normalize_digest(digest)] += 1

    def unpin(self, digest: str) -> None:
        with self._lock:
            d = normalize_digest(digest)
            self._counts[d] -= 1
            if self._counts[d] <= 0:
                del self._counts[d]

    def pinned(self, digest: str) -> bool:
        return self._counts[normalize_digest(digest)] > 0
