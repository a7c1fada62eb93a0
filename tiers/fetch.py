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
from tiers.gguf_header import FIRST_READ, GGUFHeader, NeedMore, parse

log = logging.getLogger("strato.tiers")
BLOCK = 8 << 20
LOG_EVERY = 2.0


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
                 on_progress: Callable | None, start: float) -> None:
        self.plan, self.size, self.writers = plan, size, list(writers)
        self.streams, self.retries, self.backoff = streams, retries, backoff
        self.on_header, self.on_progress, self.start = on_header, on_progress, start
        self.n = n_chunks(size, plan.chunk_size)
        self.stop = threading.Event()
        self.landed = [False] * self.n
        self.prefix = 0                # chunks [0, prefix) have all landed
        self.hasher = blake3.blake3() if plan.digest is None else None
        self.header: GGUFHeader | None = None
        self.done_bytes = 0
        self.resumed = 0
        self._logged = 0.0

    def run(self) -> tuple[GGUFHeader, str]:
        order = list(self.plan.order) if self.plan.order is not None else list(range(self.n))
        if sorted(order) != list(range(self.n)):
            raise ValueError(f"fetch order of {self.plan.label} is not a permutation of "
                             f"its {self.n} chunks")
        todo = [i for i in order if not self._resumed(i)]
        self._advance()
        with ThreadPoolExecutor(max_workers=self.streams,
                                thread_name_prefix="strato-fetch") as pool:
            pending: set[Future] = {pool.submit(self._chunk, i) for i in todo}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        index = fut.result()
                        self.landed[index] = True
                        self.done_bytes += _length(index, self.size, self.plan.chunk_size)
                    self._advance()
                    self._report(Progress(self.plan.label, self.done_bytes, self.size,
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
        plan = self.plan
        start, end = chunk_range(index, self.size, plan.chunk_size)
        failures: list[BaseException] = []
        for attempt in range(self.retries + 1):
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
        for offset in range(0, self.size, BLOCK):
            hasher.update(self.writers[0].read_at(offset, min(BLOCK, self.size - offset)))
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


