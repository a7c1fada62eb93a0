"""One miss, fetched: concurrent ranged reads, each chunk verified as it lands.

`ChunkFetch` is the state of a single load from the remote: which chunks landed, the
contiguous prefix (for the header and, for plain URIs, the in-order hash), retries with
exponential backoff, and progress. It writes every verified chunk into each writer it
was given; the loader decides which writers those are and commits them afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Sequence

import blake3

from tiers import remote
from tiers.base import BlobPlan, TierWriter, chunk_range, n_chunks
from tiers.errors import CorruptModel, IntegrityError, SourceUnavailable, TransientError
from tiers.gguf_header import GGUFHeader, HeaderParser
from tiers.timing import boottime

log = logging.getLogger("strato.tiers")
BLOCK = 8 << 20
IN_FLIGHT = 256 << 20   # bytes all streams' coalesced reads may hold at once
MAX_RUN = 64 << 20      # and one read at most, whatever the stream count
LOG_EVERY = 2.0
MIN_PER_STREAM = 16 << 20   # a stream that carries less spends more on its request
HEADER_PARTS = 4            # the header's chunks are read as this many ranges at once


def streams_for(size: int, limit: int) -> int:
    """Concurrent ranged reads for an object of `size` bytes: at most `limit` (the
    store's setting, STRATO_STREAMS), at least one, and no more than give each stream
    MIN_PER_STREAM bytes: a stored object's connections are each capped (S3: about
    80 MB/s), so many streams pay off, but a stream that moves a few megabytes costs a
    request, a connection and a thread for little."""
    return max(1, min(limit, -(-size // MIN_PER_STREAM)))


@dataclass
class FetchStats:
    """What one miss cost, for the load's phase timings (core.serving.load_timings).

    Times are on tiers.timing's boottime clock (they line up with the process start);
    CPU and write figures are sums over the fetch threads, which run side by side, so
    they can exceed the fetch's wall time.
    """

    started: float = 0.0           # the fetch began (first ranged read submitted)
    header_at: float = 0.0         # the GGUF header was verified or parsed (0: not yet)
    finished: float = 0.0          # every chunk verified and written
    bytes: int = 0                 # bytes read from the remote (stored form)
    streams: int = 0               # concurrent ranged reads actually used
    requests: int = 0              # ranged reads issued (coalesced runs, retries)
    verify_cpu: float = 0.0        # CPU seconds of BLAKE3 (and zstd) over the chunks
    write_seconds: float = 0.0     # wall seconds spent writing chunks into the tiers

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)

    @property
    def rate(self) -> float:
        """Bytes per second over the whole fetch."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


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


class _ChunkFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind       # "integrity" | "short"


class ChunkFetch:
    """One miss: concurrent chunk fetches into a set of writers (state of one load)."""

    def __init__(self, plan: BlobPlan, size: int, writers: Sequence[TierWriter], *,
                 streams: int, retries: int, backoff: float, on_header: Callable | None,
                 on_head: Callable[[], None] | None = None,
                 on_progress: Callable | None, start: float,
                 bulk_after: threading.Event | None = None) -> None:
        self.plan, self.size, self.writers = plan, size, list(writers)
        self.streams = streams_for(size, streams)
        self.retries, self.backoff = retries, backoff
        self.on_header, self.on_progress, self.start = on_header, on_progress, start
        self.on_head = on_head       # the header's chunks are verified (before parsing)
        # With digests per chunk, a build offered on the verified header chunks needs no
        # parse from this process, and a manifest's plan carries the GGUF summary the
        # tiers' metadata needs: the loader parses after the fetch (see `_advance`).
        self.deferred = (on_head is not None and plan.chunk_digests is not None
                         and "gguf" in plan.meta)
        self.bulk_after = bulk_after  # the reads after the header's wait for it
        # Reads land in place when the first writer is memory that can be read into (a
        # RAM tier's memfd) and stored bytes are raw bytes (no zstd frames to decode).
        self.in_place: Callable[[int, int], memoryview] | None = \
            getattr(self.writers[0], "buffer", None) if self.writers \
            and plan.compression == "none" else None
        self.n = n_chunks(size, plan.chunk_size)
        self.stop = threading.Event()
        self.landed = [False] * self.n
        self.prefix = 0                # chunks [0, prefix) have all landed
        self.hasher = blake3.blake3() if plan.digest is None else None
        self.header: GGUFHeader | None = None
        # The landed prefix's header parse, resumed as chunks land (HeaderParser).
        self._parser = HeaderParser(size)
        self.done_bytes = 0
        self.resumed = 0
        self._logged = 0.0
        self.stats = FetchStats()
        self._stats_lock = threading.Lock()

    def run(self) -> tuple[GGUFHeader | None, str]:
        """Fetch every chunk; (the header, or None when its parse is deferred, and the
        blob digest)."""
        order = list(self.plan.order) if self.plan.order is not None else list(range(self.n))
        if sorted(order) != list(range(self.n)):
            raise ValueError(f"fetch order of {self.plan.label} is not a permutation of "
                             f"its {self.n} chunks")
        todo = [i for i in order if not self._resumed(i)]
        self._advance()
        run_bytes = min(MAX_RUN, IN_FLIGHT // max(1, self.streams))
        runs = plan_runs(todo, self.streams, max(1, run_bytes // self.plan.chunk_size),
                         head=self.plan.header_chunks)
        self.stats.started = boottime()
        self.stats.streams = min(self.streams, len(runs))
        # The header's run goes alone, the rest once it has landed: streams share the
        # bandwidth (and, on a small machine, the CPU) evenly, so a header read beside
        # all the others would land as late as they do, and everything that waits on
        # the header (the model build, /v1/models) with it.
        later = runs[1:] if runs and runs[0][0] < self.plan.header_chunks else []
        with ThreadPoolExecutor(max_workers=self.streams,
                                thread_name_prefix="strato-fetch") as pool:
            pending: set[Future] = {pool.submit(self._run, run)
                                    for run in (runs[:1] if later else runs)}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        for index in fut.result():
                            self.landed[index] = True
                            self.done_bytes += _length(index, self.size,
                                                       self.plan.chunk_size)
                    self._advance()         # the header's chunks: the build can start
                    if later:
                        self._wait_for_bulk()
                        pending |= {pool.submit(self._run, run) for run in later}
                        later = []
                    self._report(Progress(self.plan.label, self.done_bytes, self.size,
                                          time.monotonic() - self.start))
            except BaseException:
                self.stop.set()
                for fut in pending:
                    fut.cancel()
                raise
        if self.header is None and not self.deferred:
            raise CorruptModel(f"{self.plan.label}: GGUF header is truncated")
        digest = self.plan.digest or self.hasher.hexdigest()  # type: ignore[union-attr]
        if self.plan.digest is not None and self.plan.chunk_digests is None:
            self._verify_whole(digest)
        self.stats.finished = boottime()
        return self.header, digest

    def _wait_for_bulk(self) -> None:
        """Hold the reads after the header's until `bulk_after` is set (a cold start's
        llama_cpp import: 16 streams' reads, each taking the GIL for every buffer they
        receive, made a 0.2 s import take 0.7 s, and the model build waits for it)."""
        if self.bulk_after is None:
            return
        while not self.bulk_after.wait(0.05):
            if self.stop.is_set():
                raise SourceUnavailable("load cancelled")

    def _count(self, **add: float) -> None:
        """Add to the fetch's counters from any fetch thread."""
        with self._stats_lock:
            for name, value in add.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _report(self, progress: Progress) -> None:
        """To the caller on every chunk; to the log every few seconds (a big model
        should show it is alive without flooding CloudWatch)."""
        if self.on_progress is not None:
            self.on_progress(progress)
        if progress.seconds - self._logged >= LOG_EVERY:
            self._logged = progress.seconds
            eta = f"{progress.eta:.0f}s" if progress.eta is not None else "?"
            log.info("fetching %s: %.0f/%.0f MB, %.1f MB/s, ETA %s", progress.name,
                     progress.done / 1e6, progress.total / 1e6, progress.rate / 1e6, eta)

    def _resumed(self, index: int) -> bool:
        """Take a chunk from an abandoned earlier attempt instead of the network.

        A writer that resumed a partial (a disk tier after kill -9) may hold the chunk;
        if its bytes still match the chunk digest they are copied into the writers that
        lack them (RAM starts empty) and the chunk is not fetched.
        """
        digests = self.plan.chunk_digests
        if digests is None:
            return False
        start, end = chunk_range(index, self.size, self.plan.chunk_size)
        holders = [w for w in self.writers if w.resumed_bytes() >= end]
        good = None
        for w in holders:
            data = w.read_at(start, end - start)
            if blake3.blake3(data).hexdigest() == digests[index]:
                good = (w, data)
                break
        if good is None:
            return False
        for w in self.writers:
            if w is not good[0]:
                w.write_at(start, good[1])
        self.landed[index] = True
        self.done_bytes += end - start
        self.resumed += end - start
        return True

    def _advance(self) -> None:
        """Extend the landed prefix: parse the header, feed the in-order hash."""
        cs = self.plan.chunk_size
        while self.prefix < self.n and self.landed[self.prefix]:
            start, end = chunk_range(self.prefix, self.size, cs)
            if self.hasher is not None:
                cpu = time.thread_time()
                self.hasher.update(self.writers[0].read_at(start, end - start))
                self._count(verify_cpu=time.thread_time() - cpu)
            self.prefix += 1
        if self.on_head is not None and self.plan.chunk_digests is not None \
                and self.prefix >= min(self.plan.header_chunks, self.n):
            # Verified against the manifest: the model build need not wait for this
            # process's own parse of a 262k-token vocabulary (0.17 s of Python, holding
            # the GIL). Nor need the other reads: parsed here it held every fetch thread
            # back, so with `deferred` the loader parses once the gate has opened.
            on_head, self.on_head = self.on_head, None
            self.stats.header_at = boottime()
            on_head()
        if self.header is None and self.prefix and not self.deferred:
            landed = self.writers[0]
            try:
                header = self._parser.read(lambda start, end: landed.read_at(start, end - start),
                                           available=min(self.prefix * cs, self.size))
            except CorruptModel as exc:
                raise CorruptModel(f"{self.plan.label}: {exc}") from None
            if header is None:
                return                  # wait for more chunks to land
            self.header = header
            self.stats.header_at = self.stats.header_at or boottime()
            if self.on_header is not None:
                self.on_header(header)

    def _run(self, run: list[int]) -> list[int]:
        """Fetch consecutive chunks with one ranged read, then verify and write each.

        A chunk that fails its digest, or every chunk of a read that failed, is fetched
        again on its own by `_chunk` (with its retries and backoff): coalescing saves
        requests, never correctness. Returns the chunk indices, all landed.
        """
        if len(run) == 1:
            return [self._chunk(run[0])]
        try:
            pieces = self._read_run(run)
        except (TransientError, _ChunkFailed) as exc:
            log.warning("chunks %d-%d of %s failed as one read (%s): fetching them one by "
                        "one", run[0], run[-1], self.plan.label, str(exc))
            return [self._chunk(i) for i in run]
        for index, data in pieces:
            if data is None:
                self._chunk(index)
            else:
                self._write(index, data)
        return run

    def _write(self, index: int, data: bytes | memoryview) -> None:
        """A verified chunk, at its offset, into every target tier (but the first when
        the chunk was read into it in place)."""
        start, _ = chunk_range(index, self.size, self.plan.chunk_size)
        began = time.monotonic()
        for w in self.writers[1:] if self.in_place is not None else self.writers:
            w.write_at(start, data)
        self._count(write_seconds=time.monotonic() - began)

    def _read_run(self, run: list[int]) -> list[tuple[int, bytes | memoryview | None]]:
        """(index, verified bytes or None where the chunk's digest failed) for a run."""
        if self.stop.is_set():
            raise SourceUnavailable("load cancelled")
        bounds = [self._stored(i) for i in run]
        lo = bounds[0][0]
        blob = self._fetch(lo, bounds[-1][1], self._parts(run[0]))  # chunks: views into it
        out: list[tuple[int, bytes | memoryview | None]] = []
        for index, (a, b) in zip(run, bounds):
            try:
                out.append((index, self._checked(index, blob[a - lo:b - lo])))
            except _ChunkFailed as exc:
                log.warning("chunk %d of %s: %s; fetching it again", index,
                            self.plan.label, str(exc))
                out.append((index, None))
        return out

    def _chunk(self, index: int) -> int:
        """Fetch, verify and write one chunk, retrying; returns its index."""
        plan = self.plan
        failures: list[BaseException] = []
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                raise SourceUnavailable("load cancelled")
            try:
                self._write(index, self._read(index))
                return index
            except (TransientError, _ChunkFailed) as exc:
                failures.append(exc)
                # str(exc): a record holding the exception holds its traceback, and
                # with it the views of a read in place (the memfd stays mapped writable)
                log.warning("chunk %d of %s failed (attempt %d): %s", index, plan.label,
                            attempt + 1, str(exc))
                if attempt < self.retries:
                    self.stop.wait(self.backoff * (2 ** attempt))
        last = failures[-1]
        tries = len(failures)
        if isinstance(last, _ChunkFailed) and last.kind == "integrity":
            raise IntegrityError(f"chunk {index} of {plan.label} failed BLAKE3 verification "
                                 f"{tries} times: {last}")
        if isinstance(last, _ChunkFailed):
            raise CorruptModel(f"{plan.label} at {plan.url} is truncated: {last}")
        raise SourceUnavailable(f"{plan.url} kept failing after {tries} attempts "
                                f"(chunk {index}): {last}")

    def _read(self, index: int) -> bytes | memoryview:
        """Chunk `index` alone, verified."""
        return self._checked(index, self._fetch(*self._stored(index), self._parts(index)))

    def _parts(self, index: int) -> int:
        """Ranges to read a run starting at chunk `index` with: the header's as several
        at once (everything else waits on the header: the model build, /v1/models; a
        connection's cap would make one 8 MiB read of it take 0.1 s at 80 MB/s)."""
        return HEADER_PARTS if index < self.plan.header_chunks else 1

    def _stored(self, index: int) -> tuple[int, int]:
        """Where chunk `index` is in the stored object: its zstd frame, or its bytes."""
        if self.plan.compression == "zstd":
            assert self.plan.frame_offsets is not None
            return self.plan.frame_offsets[index], self.plan.frame_offsets[index + 1]
        return chunk_range(index, self.size, self.plan.chunk_size)

    def _fetch(self, lo: int, hi: int, parts: int = 1) -> memoryview:
        """Stored bytes [lo, hi) as one ranged read, or `parts` concurrent ones; read in
        place (into the first writer's memory) or into a buffer of their own. A short
        answer fails its chunks."""
        bounds = [(lo, hi)]
        if parts > 1 and hi - lo >= parts << 20:
            step = -(-(hi - lo) // parts)
            bounds = [(a, min(a + step, hi)) for a in range(lo, hi, step)]
        target = self.in_place(lo, hi - lo) if self.in_place is not None else \
            memoryview(bytearray(hi - lo)) if len(bounds) > 1 else None

        def read(span: tuple[int, int]) -> memoryview:
            a, b = span
            into = target[a - lo:b - lo] if target is not None else None
            return memoryview(remote.read_range(self.plan.url, a, b, into=into))

        if len(bounds) > 1:
            with ThreadPoolExecutor(len(bounds), thread_name_prefix="strato-head") as pool:
                pieces = list(pool.map(read, bounds))
        else:
            pieces = [read(bounds[0])]
        got = sum(len(p) for p in pieces)
        self._count(bytes=got, requests=len(bounds))
        if [len(p) for p in pieces] != [b - a for a, b in bounds]:
            raise _ChunkFailed("short", f"bytes {lo}-{hi}: got {got} of {hi - lo}")
        return target if target is not None else pieces[0]

    def _checked(self, index: int, stored: bytes | memoryview) -> bytes | memoryview:
        """Chunk `index`'s raw bytes from its stored form (decompressed), verified
        against its BLAKE3 digest when the plan has per-chunk digests."""
        plan = self.plan
        start, end = chunk_range(index, self.size, plan.chunk_size)
        cpu = time.thread_time()
        data = _decompress(stored, end - start) if plan.compression == "zstd" else stored
        if plan.chunk_digests is not None:
            got = blake3.blake3(data).hexdigest()
            self._count(verify_cpu=time.thread_time() - cpu)
            if got != plan.chunk_digests[index]:
                raise _ChunkFailed("integrity", f"expected {plan.chunk_digests[index]}, "
                                                f"got {got}")
        return data

    def _verify_whole(self, digest: str) -> None:
        hasher = blake3.blake3()
        for offset in range(0, self.size, BLOCK):
            hasher.update(self.writers[0].read_at(offset, min(BLOCK, self.size - offset)))
        if hasher.hexdigest() != digest:
            raise IntegrityError(f"{self.plan.label}: blob digest mismatch, expected "
                                 f"{digest}, got {hasher.hexdigest()}")


def plan_runs(todo: Sequence[int], streams: int, max_chunks: int,
              head: int = 1) -> list[list[int]]:
    """Group the chunks to fetch into runs: one ranged read each.

    Every request costs a round trip (and, on S3, a GET charge), so a fetch wants as
    few as keep every stream busy: about `len(todo) / streams` chunks per run, at most
    `max_chunks`, each run consecutive chunks in fetch order. The header's chunks (the
    first `head`, when they come first) are a run of their own, so the header is there
    as early as it can be.
    """
    if not todo:
        return []
    first = [todo[0]]
    for index in todo[1:]:
        if index >= head or index != first[-1] + 1:
            break
        first.append(index)
    rest = todo[len(first):]
    per_run = max(1, min(max_chunks, -(-len(rest) // max(1, streams))))
    runs = [first]
    current: list[int] = []
    for index in rest:
        if current and (index != current[-1] + 1 or len(current) == per_run):
            runs.append(current)
            current = []
        current.append(index)
    if current:
        runs.append(current)
    return runs


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


