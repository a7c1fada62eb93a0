"""The progressive loader: a blob from the fastest tier that has it, or from the remote.

On a hit it pins the blob and returns its path. On a miss it streams the object with
many concurrent ranged reads straight into every target tier at once, so RAM and NVMe
(and EFS behind them) fill in one pass:

1. the chunks covering the GGUF header come first; the header is parsed as soon as
   they land and handed to `on_header` (the server can describe the model meanwhile);
   with a manifest's chunk digests the fetch does not wait for that parse (the build
   is offered the verified chunks as they are): it runs on a thread of its own, and
   with a build offered early, after the first answer (`copies_after`);
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

import functools
import logging
import os
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import blake3

from tiers import remote
from tiers.base import BlobPlan, Tier, TierStats, find_digests
from tiers.disk import fetch_lock
from tiers.errors import CorruptModel, DiskFull, IntegrityError, TierFull
from tiers.fetch import ChunkFetch, FetchStats, Progress
from tiers.gate import EarlyBlob
from tiers.gguf_header import GGUFHeader, parse_whole, read_header_file
from tiers.held_header import HeldHeader
from tiers.writebehind import WriteBehind, run_in_background_priority

log = logging.getLogger("strato.tiers")

REMOTE = "remote"
COPY_BLOCK = 8 << 20
T = TypeVar("T")


def _on_a_thread(fn: Callable[[], T], name: str) -> Future[T]:
    """`fn()` on a daemon thread of its own; its result (or exception) in the future."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - the future carries it
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


@dataclass
class ModelHandle:
    """A blob ready for llama.cpp: pinned in `tier` until `release()`."""

    path: str
    digest: str
    size: int
    source: str          # where the bytes came from: a tier name, or "remote"
    tier: str            # the tier `path` points into
    seconds: float
    # The parsed header, or its parse held: a cold start with an early build parses it
    # after the first answer (`Loader.load`'s `copies_after`), or when asked first.
    _header: GGUFHeader | HeldHeader = field(repr=False)
    resumed: int = 0     # bytes kept from an abandoned earlier attempt (not refetched)
    fetch: FetchStats | None = None    # what the fetch cost (None: a tier hit)
    _release: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def header(self) -> GGUFHeader:
        """The blob's GGUF header; a held parse runs now, on this thread (CorruptModel
        if the verified header chunks do not parse)."""
        if isinstance(self._header, HeldHeader):
            return self._header.get()
        return self._header

    def release(self) -> None:
        """Unpin (idempotent): the blob may be evicted again."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> "ModelHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
        self._pending: list[threading.Thread] = []
        # Parsed headers by digest: a large vocabulary costs ~0.2 s to parse again, which
        # would be a good part of a RAM-tier swap.
        self._headers: dict[str, GGUFHeader] = {}
        for tier in self.tiers:
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
        return next(iter(find_digests(self.tiers, sources=(url,))), None)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- the one entry point ----------------------------------------------------------

    def load(self, plan: BlobPlan, *, on_header: Callable[[GGUFHeader], None] | None = None,
             on_progress: Callable[[Progress], None] | None = None, promote: bool = False,
             revalidate: bool = False, targets: Sequence[str] | None = None,
             on_early: Callable[[EarlyBlob], None] | None = None,
             copies_after: threading.Event | None = None,
             bulk_after: threading.Event | None = None) -> ModelHandle:
        """Return a pinned local copy of the blob `plan` describes.

        Steps: resolve the digest (the plan's, or a remembered plain URI); look in every
        tier fastest first (a hit is pinned and, with `promote`, copied into the faster
        tiers); otherwise fetch into `targets` (tier names; default every tier large
        enough). Raises ObjectNotFound, SourceUnavailable, IntegrityError, CorruptModel,
        TierFull, DiskFull.

        `on_early`, on a miss whose fastest target is the RAM tier, is offered the blob
        as soon as its header is verified (tiers.gate.EarlyBlob): a model can be built
        over it while the tensor bytes stream, behind the blob's gate, which this call
        opens once every chunk is verified (before the commit), or fails with its error.

        `copies_after`, on a miss with slower tiers behind a volatile fastest one, holds
        their write-behind copies until it is set (tiers.writebehind): the caller sets
        it once the model it is building no longer needs the CPU, memory bandwidth and
        page cache the copies would take from the fetch and the build. A miss offered
        `on_early` whose header chunks a manifest verified holds its own parse of the
        header until then too (the build needs none of it: llama.cpp reads the header
        itself): the handle's `header`, if asked for first, parses it there, and
        `on_header` is not called. `bulk_after`, on a miss, holds the reads after the
        header's until it is set (tiers.fetch).
        """
        start = time.monotonic()
        # The in-process lock, then the disk tiers' cross-process one (tiers/disk.py):
        # whoever waited finds the blob committed and takes the hit path below.
        with self._lock_for(plan.digest or plan.url), \
                fetch_lock(self.tiers, plan.digest or plan.url):
            digest = plan.digest or self._remembered(plan.url, revalidate)
            if digest is not None:
                handle = self._hit(digest, plan, start, promote)
                if handle is not None:
                    if on_header is not None:
                        on_header(handle.header)
                    return handle
            for tier in self.tiers:
                self.stats.record("miss", tier.name)
            return self._fetch(plan, start, on_header, on_progress, targets, on_early,
                               copies_after, bulk_after)

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
                header = self._headers.get(digest) or read_header_file(path)
                self._headers[digest] = header
            except BaseException:
                tier.unpin(digest)
                raise
            return ModelHandle(path=path, digest=digest, size=use.size_of(digest),
                               source=self.tiers[i].name, tier=use.name,
                               seconds=time.monotonic() - start, _header=header,
                               _release=functools.partial(use.unpin, digest))
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
               on_progress: Callable | None, targets: Sequence[str] | None,
               on_early: Callable[[EarlyBlob], None] | None = None,
               copies_after: threading.Event | None = None,
               bulk_after: threading.Event | None = None) -> ModelHandle:
        """The miss path. Steps: size (plan or remote), target tiers that fit, one writer
        per tier (persistent tiers behind a volatile fastest one write behind it), the
        verified concurrent fetch, commit the fastest, persist the rest in the background.
        Any failure aborts every writer: nothing partial is ever kept as a model."""
        etag = None
        size = plan.size
        if size is None:
            info = remote.info(plan.url)
            size, etag = info.size, info.etag
        chosen = self._targets(plan, size, targets)
        key = plan.digest or "url-" + blake3.blake3(plan.url.encode()).hexdigest()[:40]
        resume = plan.chunk_digests is not None
        writers: list[tuple[Tier, Any]] = []
        early: list[EarlyBlob] = []

        def offer_early(header: GGUFHeader | None) -> None:
            first = writers[0][1]
            if on_early is not None and not early and hasattr(first, "share"):
                early.append(EarlyBlob(first.share(), size, header))
                on_early(early[0])

        def header_seen(header: GGUFHeader) -> None:
            if on_header is not None:
                on_header(header)
            if early:
                early[0].header = header
            offer_early(header)

        # A fetch whose header chunks a manifest verified (tiers.fetch `deferred`) parses
        # none itself: the build is offered those chunks as they are, and a copy of them
        # is parsed on a thread of its own for `on_header`, the handle and the next load
        # (a swap back to this blob). With a build offered early and `copies_after`, the
        # thread waits for it: on two vCPUs a cold start is bound by the CPU, and 0.065
        # CPU s of GIL-bound Python beside the fetch and the build put Gemma 3's first
        # token later. Whoever needs the header before then parses it (HeldHeader), so
        # nothing waits on the held thread; a parse not begun when the load fails never
        # begins.
        held: list[HeldHeader] = []          # the verified header chunks' parse
        announced: list[Future[None]] = []   # its thread, when not held: `on_header`

        def parse_beside(parse: HeldHeader, after: threading.Event | None) -> None:
            if after is None:
                header_seen(parse.get())
                return
            after.wait()
            try:
                self._headers.setdefault(key, parse.get())
            except CorruptModel as exc:   # abandoned (the load failed), or unparsable
                log.info("%s: no GGUF header kept for the next load: %s", plan.label, exc)

        def head_verified() -> None:
            offer_early(None)
            if job.deferred:
                landed = writers[0][1].read_at(0, min(plan.header_chunks * plan.chunk_size,
                                                      size))
                parse = HeldHeader(functools.partial(parse_whole, landed, size), plan.label)
                held.append(parse)
                after = copies_after if early else None
                thread = _on_a_thread(functools.partial(parse_beside, parse, after),
                                      "strato-header")
                if after is None:
                    announced.append(thread)

        try:
            for tier in chosen:
                try:
                    writer: Any = tier.begin_write(key, size, resume=resume)
                except (TierFull, DiskFull) as exc:
                    if tier is chosen[-1] and not writers:
                        raise
                    log.warning("tier %s skipped for %s: %s", tier.name, plan.label, exc)
                    continue
                if writers and not writers[0][0].persistent:
                    writer = WriteBehind(writer, tier.name, hold=copies_after)
                writers.append((tier, writer))
            job = ChunkFetch(plan, size, [w for _, w in writers], streams=self.streams,
                             retries=self.retries, backoff=self.backoff,
                             on_header=header_seen, on_progress=on_progress, start=start,
                             on_head=head_verified, bulk_after=bulk_after)
            parsed, digest = job.run()
            # Every byte is verified: a build held at the gate may read them now, not
            # after the commit (sealing the memfd unmaps the fetch's writable mapping of
            # it, 0.17 s for 2.4 GB). A commit that fails still fails this load, and the
            # caller closes the model it built, unserved (failing an open gate is a no-op).
            for blob in early:
                blob.gate.open()
            meta = {**plan.meta, "source": plan.url, "size": size, "etag": etag,
                    "name": plan.name, **({"gguf": parsed.summary()}
                                          if "gguf" not in plan.meta and parsed else {})}
            now = [(t, w) for t, w in writers if not isinstance(w, WriteBehind)]
            later = [(t, w) for t, w in writers if isinstance(w, WriteBehind)]
            for tier, w in now:
                w.commit(digest, meta)
                self.stats.record("bytes", tier.name, size)
        except BaseException as exc:
            for blob in early:
                blob.gate.fail(exc)
            for _, w in writers:
                w.abort()
            for parse in held:
                parse.abandon()      # not begun: never begins; under way: ends first
            wait(announced)          # its `on_header` comes before the failure, not after
            raise
        fastest = writers[0][0]
        fastest.pin(digest)
        header: GGUFHeader | HeldHeader
        if parsed is not None:       # a plain URL's, parsed during the fetch
            header = parsed
        elif announced:              # parsed beside the fetch, `on_header` called
            try:
                header = held[0].get()
                announced[0].result()
            except BaseException:
                fastest.unpin(digest)
                for _, w in later:
                    w.abort()
                raise
        else:                        # held until the first answer, or until asked
            header = held[0]
        if not isinstance(header, HeldHeader):
            self._headers[digest] = header
        if later:
            fastest.pin(digest)          # held until the tiers behind it are filled
            self._background(self._persist, fastest, later, digest, meta, size)
        seconds = time.monotonic() - start
        log.info("loaded %s (%d bytes) from remote in %.2fs (%.1f MB/s) into %s",
                 plan.label, size, seconds, size / max(seconds, 1e-9) / 1e6,
                 ", ".join(t.name for t, _ in writers))
        return ModelHandle(path=fastest.path(digest), digest=digest, size=size,
                           source=REMOTE, tier=fastest.name, seconds=seconds, _header=header,
                           resumed=job.resumed, fetch=job.stats,
                           _release=lambda: fastest.unpin(digest))

    def _background(self, fn: Callable[..., None], *args: object) -> None:
        # Not a daemon: a CLI process that exits right after a load still finishes it.
        thread = threading.Thread(target=fn, args=args, name="strato-persist")
        with self._locks_guard:
            self._pending = [t for t in self._pending if t.is_alive()] + [thread]
        thread.start()

    def _persist(self, fastest: Tier, later: list[tuple[Tier, WriteBehind]], digest: str,
                 meta: dict, size: int) -> None:
        """Finish the write-behind tiers from the fast copy (fsync, rename) and count them."""
        run_in_background_priority()
        try:
            fd = os.open(fastest.path(digest), os.O_RDONLY)
            try:
                for tier, sink in later:
                    try:
                        sink.finish(lambda off, n: os.pread(fd, n, off), digest, meta)
                        self.stats.record("bytes", tier.name, size)
                    except Exception as exc:  # the served copy is fine
                        log.warning("could not persist %s in %s: %s", digest[:12], tier.name,
                                    exc)
            finally:
                os.close(fd)
        finally:
            fastest.unpin(digest)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for background commits into persistent tiers (tests, shutdown)."""
        with self._locks_guard:
            pending = list(self._pending)
        for thread in pending:
            thread.join(timeout)

    def _targets(self, plan: BlobPlan, size: int, names: Sequence[str] | None) -> list[Tier]:
        pool = [t for t in self.tiers if names is None or t.name in names]
        fits = [t for t in pool if t.capacity >= size]
        if not fits:
            biggest = max(pool, key=lambda t: t.capacity, default=None)
            where = (f"the largest tier, {biggest.name}, holds {biggest.capacity} bytes"
                     if biggest else "no tier is configured")
            raise TierFull(f"{plan.label} needs {size} bytes but {where}")
        return fits


__all__ = ["Loader", "ModelHandle", "Progress", "REMOTE"]
