"""The progressive loader: a blob from the fastest tier that has it, or from the remote.

On a hit it pins the blob and returns its path. On a miss it streams the object with
many concurrent ranged reads straight into every target tier at once, so RAM and NVMe
(and EFS behind them) fill in one pass:

1. the chunks covering the GGUF header come first; the header is parsed as soon as
   they land and handed to `on_header` (the server can describe the model meanwhile);
2. every chunk is decompressed (zstd) and verified against its BLAKE3 as it lands; a
   bad or short chunk is fetched again, with exponential backoff, a bounded number of
   times; a source that keeps failing ends in SourceUnavailable / IntegrityError;
3. a plain URI (no manifest) is hashed in offset order while it streams and stored
   under the resulting digest; its URL is remembered in the blob's metadata so the
   next load of the same URL is a hit;
4. every writer is committed only after all bytes are verified; on any failure all
   writers abort, so nothing partial is ever taken for a model.

The loader is synchronous and thread-based (fsspec's sync calls from a pool): core
calls it through `asyncio.to_thread`, and callbacks run on the loader's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Sequence

import blake3

from tiers import remote
from tiers.base import BlobPlan, Tier, TierStats, TierWriter, chunk_range, n_chunks
from tiers.errors import (CorruptModel, DiskFull, IntegrityError, SourceUnavailable,
                          TierFull, TransientError)
from tiers.gguf_header import FIRST_READ, GGUFHeader, NeedMore, parse, read_header_file

log = logging.getLogger("strato.tiers")

REMOTE = "remote"
COPY_BLOCK = 8 << 20


@dataclass(frozen=True)
class Progress:
    """One progress report: verified bytes so far, of `total`, after `seconds`."""

    name: str
    done: int
    total: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second since the fetch started."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass
class ModelHandle:
    """A blob ready for llama.cpp: pinned in `tier` until `release()`."""

    path: str
    digest: str
    size: int
    source: str          # where the bytes came from: a tier name, or "remote"
    tier: str            # the tier `path` points into
    seconds: float
    header: GGUFHeader
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def release(self) -> None:
        """Unpin (idempotent): the blob may be evicted again."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> "ModelHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _ChunkFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind       # "integrity" | "short"


class Loader:
    """Composes tiers (fastest first) over the remote named by each plan.

    `streams` ranged reads run at once; each chunk gets `retries` further attempts
    with backoff `backoff * 2**attempt` seconds. `stats` receives hits, misses, bytes
    and evictions per tier (core forwards them to Prometheus).
    """

    def __init__(self, tiers: Sequence[Tier], *, streams: int = 16, retries: int = 4,
                 backoff: float = 0.2, stats: TierStats | None = None) -> None:
        if streams <= 0:
            raise ValueError("streams must be positive")
        self.tiers = list(tiers)
        self.streams = streams
        self.retries = retries
        self.backoff = backoff
        self.stats = stats or TierStats()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        for tier in self.tiers:
            if hasattr(tier, "on_evict"):
                tier.on_evict = lambda digest, t=tier: self.stats.record("eviction", t.name)

    # -- lookups ---------------------------------------------------------------------

    def locate(self, digest: str) -> Tier | None:
        """The fastest tier holding `digest`, or None."""
        return next((t for t in self.tiers if t.contains(digest)), None)

    def digest_for(self, url: str) -> str | None:
        """The digest a plain URI was stored under by an earlier load, if any tier has it.

        Plain URIs are taken as immutable once cached (like an image tag pinned by
        digest): a swap between cached models never touches the remote. Pass
        `revalidate=True` to `load` to compare size and ETag with the remote first.
        """
        for tier in self.tiers:
            for entry in tier.entries():
                if entry.meta.get("source") == url:
                    return entry.digest
        return None

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- the one entry point ----------------------------------------------------------

    def load(self, plan: BlobPlan, *, on_header: Callable[[GGUFHeader], None] | None = None,
             on_progress: Callable[[Progress], None] | None = None, promote: bool = False,
             revalidate: bool = False, targets: Sequence[str] | None = None) -> ModelHandle:
        """Return a pinned local copy of the blob `plan` describes.

        Steps: resolve the digest (the plan's, or a remembered plain URI); look in every
        tier fastest first (a hit is pinned and, with `promote`, copied into the faster
        tiers); otherwise fetch into `targets` (tier names; default every tier large
        enough). Raises ObjectNotFound, SourceUnavailable, IntegrityError, CorruptModel,
        TierFull, DiskFull.
        """
        start = time.monotonic()
        with self._lock_for(plan.digest or plan.url):
            digest = plan.digest or self._remembered(plan.url, revalidate)
            if digest is not None:
                handle = self._hit(digest, plan, start, promote)
                if handle is not None:
                    if on_header is not None:
                        on_header(handle.header)
                    return handle
            for tier in self.tiers:
                self.stats.record("miss", tier.name)
            return self._fetch(plan, start, on_header, on_progress, targets)

    def _remembered(self, url: str, revalidate: bool) -> str | None:
        digest = self.digest_for(url)
        if digest is None or not revalidate:
            return digest
        tier = self.locate(digest)
        if tier is None:
            return None
        meta = tier.meta(digest)
        now = remote.info(url)
        if now.size != meta.get("size") or (now.etag or None) != meta.get("etag"):
            log.info("remote object changed since it was cached", extra={"url": url})
            return None
        return digest

    def _hit(self, digest: str, plan: BlobPlan, start: float, promote: bool
             ) -> ModelHandle | None:
        for i, tier in enumerate(self.tiers):
            if not tier.contains(digest):
                continue
            tier.pin(digest)
            try:
                for faster in self.tiers[:i]:
                    self.stats.record("miss", faster.name)
                self.stats.record("hit", tier.name)
                use = tier
                if promote:
                    for faster in reversed(self.tiers[:i]):
                        if self._copy(digest, tier, faster):
                            faster.pin(digest)
                            tier.unpin(digest)
                            use = tier = faster
                path = use.path(digest)
                header = read_header_file(path)
            except BaseException:
                tier.unpin(digest)
                raise
            return ModelHandle(path=path, digest=digest, size=use.size_of(digest),
                               source=self.tiers[i].name, tier=use.name,
                               seconds=time.monotonic() - start, header=header,
                               _release=lambda: use.unpin(digest))
        return None

    # -- promotion ----------------------------------------------------------------------

    def promote(self, digest: str, to: str | None = None) -> bool:
        """Copy a blob into a faster tier (`to`, or the next faster one); True if copied.

        Used by the promotion policy in the background; a tier without room is skipped.
        """
        source = self.locate(digest)
        if source is None:
            return False
        idx = self.tiers.index(source)
        candidates = [t for t in self.tiers[:idx] if to is None or t.name == to]
        if not candidates:
            return False
        return self._copy(digest, source, candidates[-1])

    def _copy(self, digest: str, source: Tier, target: Tier) -> bool:
        size = source.size_of(digest)
        if target.contains(digest):
            return True
        if size > target.capacity:
            return False
        source.pin(digest)
        try:
            try:
                writer = target.begin_write(digest, size)
            except (TierFull, DiskFull) as exc:
                log.info("promotion skipped: %s", exc)
                return False
            try:
                hasher = blake3.blake3()
                with open(source.path(digest), "rb") as f:
                    offset = 0
                    while block := f.read(COPY_BLOCK):
                        hasher.update(block)
                        writer.write_at(offset, block)
                        offset += len(block)
                if hasher.hexdigest() != digest:
                    raise IntegrityError(f"blob {digest} in {source.name} does not match its "
                                         f"digest (got {hasher.hexdigest()}); not promoted")
                writer.commit(digest, source.meta(digest))
            except BaseException:
                writer.abort()
                raise
            self.stats.record("bytes", target.name, size)
            return True
        finally:
            source.unpin(digest)

    # -- the miss path -------------------------------------------------------------------

    def _fetch(self, plan: BlobPlan, start: float, on_header: Callable | None,
               on_progress: Callable | None, targets: Sequence[str] | None) -> ModelHandle:
        etag = None
        size = plan.size
        if size is None:
            info = remote.info(plan.url)
            size, etag = info.size, info.etag
        chosen = self._targets(plan, size, targets)
        key = plan.digest or "url-" + blake3.blake3(plan.url.encode()).hexdigest()[:40]
        resume = plan.chunk_digests is not None
        writers: list[tuple[Tier, TierWriter]] = []
        try:
            for tier in chosen:
                try:
                    writers.append((tier, tier.begin_write(key, size, resume=resume)))
                except (TierFull, DiskFull) as exc:
                    if tier is chosen[-1] and not writers:
                        raise
                    log.warning("tier %s skipped for %s: %s", tier.name, plan.label, exc)
            job = _Fetch(self, plan, size, [w for _, w in writers], on_header, on_progress,
                         start)
            header, digest = job.run()
            meta = {**plan.meta, "source": plan.url, "size": size, "etag": etag,
                    "name": plan.name, **({"gguf": header.summary()}
                                          if "gguf" not in plan.meta else {})}
            for tier, writer in writers:
                writer.commit(digest, meta)
                self.stats.record("bytes", tier.name, size)
        except BaseException:
            for _, writer in writers:
                writer.abort()
            raise
        fastest = writers[0][0]
        fastest.pin(digest)
        seconds = time.monotonic() - start
        log.info("loaded %s (%d bytes) from remote in %.2fs (%.1f MB/s) into %s",
                 plan.label, size, seconds, size / max(seconds, 1e-9) / 1e6,
                 ", ".join(t.name for t, _ in writers))
        return ModelHandle(path=fastest.path(digest), digest=digest, size=size,
                           source=REMOTE, tier=fastest.name, seconds=seconds, header=header,
                           _release=lambda: fastest.unpin(digest))

    def _targets(self, plan: BlobPlan, size: int, names: Sequence[str] | None) -> list[Tier]:
        pool = [t for t in self.tiers if names is None or t.name in names]
        fits = [t for t in pool if t.capacity >= size]
        if not fits:
            biggest = max(pool, key=lambda t: t.capacity, default=None)
            where = (f"the largest tier, {biggest.name}, holds {biggest.capacity} bytes"
                     if biggest else "no tier is configured")
            raise TierFull(f"{plan.label} needs {size} bytes but {where}")
        return fits


class _Fetch:
    """One miss: concurrent chunk fetches into a set of writers (state of one load)."""

    def __init__(self, loader: Loader, plan: BlobPlan, size: int, writers: list[TierWriter],
                 on_header: Callable | None, on_progress: Callable | None, start: float
                 ) -> None:
        self.loader, self.plan, self.size, self.writers = loader, plan, size, writers
        self.on_header, self.on_progress, self.start = on_header, on_progress, start
        self.n = n_chunks(size, plan.chunk_size)
        self.stop = threading.Event()
        self.landed = [False] * self.n
        self.prefix = 0                # chunks [0, prefix) have all landed
        self.hasher = blake3.blake3() if plan.digest is None else None
        self.header: GGUFHeader | None = None
        self.done_bytes = 0

    def run(self) -> tuple[GGUFHeader, str]:
        order = list(self.plan.order) if self.plan.order is not None else list(range(self.n))
        if sorted(order) != list(range(self.n)):
            raise ValueError(f"fetch order of {self.plan.label} is not a permutation of "
                             f"its {self.n} chunks")
        todo = [i for i in order if not self._resumed(i)]
        self._advance()
        with ThreadPoolExecutor(max_workers=self.loader.streams,
                                thread_name_prefix="strato-fetch") as pool:
            pending: set[Future] = {pool.submit(self._chunk, i) for i in todo}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        index = fut.result()
                        self.landed[index] = True
                        self.done_bytes += _length(index, self.size, self.plan.chunk_size)
                    self._advance()
                    if self.on_progress is not None:
                        self.on_progress(Progress(self.plan.label, self.done_bytes, self.size,
                                                  time.monotonic() - self.start))
            except BaseException:
                self.stop.set()
                for fut in pending:
                    fut.cancel()
                raise
        if self.header is None:
            raise CorruptModel(f"{self.plan.label}: GGUF header is truncated")
        digest = self.plan.digest or self.hasher.hexdigest()  # type: ignore[union-attr]
        if self.plan.digest is not None and self.plan.chunk_digests is None:
            self._verify_whole(digest)
        return self.header, digest

    def _resumed(self, index: int) -> bool:
        """A chunk left by an abandoned attempt that still matches its digest."""
        digests = self.plan.chunk_digests
        start, end = chunk_range(index, self.size, self.plan.chunk_size)
        if digests is None or any(w.resumed_bytes() < end for w in self.writers):
            return False
        for w in self.writers:
            if blake3.blake3(w.read_at(start, end - start)).hexdigest() != digests[index]:
                return False
        self.landed[index] = True
        self.done_bytes += end - start
        return True

    def _advance(self) -> None:
        """Extend the landed prefix: parse the header, feed the in-order hash."""
        cs = self.plan.chunk_size
        while self.prefix < self.n and self.landed[self.prefix]:
            start, end = chunk_range(self.prefix, self.size, cs)
            if self.hasher is not None:
                self.hasher.update(self.writers[0].read_at(start, end - start))
            self.prefix += 1
        if self.header is None and self.prefix:
            avail = min(self.prefix * cs, self.size)
            want = min(avail, FIRST_READ)
            while True:
                try:
                    header = parse(self.writers[0].read_at(0, want), self.size)
                    break
                except NeedMore as need:
                    if want >= self.size:
                        raise CorruptModel(f"{self.plan.label}: GGUF header is "
                                           "truncated") from None
                    if want >= avail:
                        return          # wait for more chunks to land
                    want = min(need.needed, avail)
            self.header = header
            if self.on_header is not None:
                self.on_header(header)

    def _chunk(self, index: int) -> int:
        """Fetch, verify and write one chunk, retrying; returns its index."""
        plan, loader = self.plan, self.loader
        start, end = chunk_range(index, self.size, plan.chunk_size)
        failures: list[BaseException] = []
        for attempt in range(loader.retries + 1):
            if self.stop.is_set():
                raise SourceUnavailable("load cancelled")
            try:
                data = self._read(index, start, end)
                for w in self.writers:
                    w.write_at(start, data)
                return index
            except (TransientError, _ChunkFailed) as exc:
                failures.append(exc)
                log.warning("chunk %d of %s failed (attempt %d): %s", index, plan.label,
                            attempt + 1, exc)
                if attempt < loader.retries:
                    self.stop.wait(loader.backoff * (2 ** attempt))
        last = failures[-1]
        tries = len(failures)
        if isinstance(last, _ChunkFailed) and last.kind == "integrity":
            raise IntegrityError(f"chunk {index} of {plan.label} failed BLAKE3 verification "
                                 f"{tries} times: {last}")
        if isinstance(last, _ChunkFailed):
            raise CorruptModel(f"{plan.label} at {plan.url} is truncated: {last}")
        raise SourceUnavailable(f"{plan.url} kept failing after {tries} attempts "
                                f"(chunk {index}): {last}")

    def _read(self, index: int, start: int, end: int) -> bytes:
        plan = self.plan
        if plan.compression == "zstd":
            assert plan.frame_offsets is not None
            lo, hi = plan.frame_offsets[index], plan.frame_offsets[index + 1]
            frame = remote.read_range(plan.url, lo, hi)
            if len(frame) != hi - lo:
                raise _ChunkFailed("short", f"frame {index}: got {len(frame)} of "
                                            f"{hi - lo} bytes")
            data = _decompress(frame, end - start)
        else:
            data = remote.read_range(plan.url, start, end)
            if len(data) != end - start:
                raise _ChunkFailed("short", f"bytes {start}-{end}: got {len(data)} of "
                                            f"{end - start}")
        if plan.chunk_digests is not None:
            got = blake3.blake3(data).hexdigest()
            if got != plan.chunk_digests[index]:
                raise _ChunkFailed("integrity", f"expected {plan.chunk_digests[index]}, "
                                                f"got {got}")
        return data

    def _verify_whole(self, digest: str) -> None:
        hasher = blake3.blake3()
        for offset in range(0, self.size, COPY_BLOCK):
            hasher.update(self.writers[0].read_at(offset, min(COPY_BLOCK, self.size - offset)))
        if hasher.hexdigest() != digest:
            raise IntegrityError(f"{self.plan.label}: blob digest mismatch, expected "
                                 f"{digest}, got {hasher.hexdigest()}")


def _length(index: int, size: int, chunk_size: int) -> int:
    start, end = chunk_range(index, size, chunk_size)
    return end - start


def _decompress(frame: bytes, raw_len: int) -> bytes:
    import zstandard

    try:
        data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise _ChunkFailed("integrity", f"zstd frame does not decode: {exc}") from exc
    if len(data) != raw_len:
        raise _ChunkFailed("integrity", f"zstd frame decodes to {len(data)} bytes, "
                                        f"expected {raw_len}")
    return data


__all__ = ["Loader", "ModelHandle", "Progress", "REMOTE"]
