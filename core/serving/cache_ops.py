"""The local model store outside a server: what `strato pull`, `rm` and `inspect` do.

A CLI process is short-lived, so its RAM tier would die with it: `pull` fetches into
the persistent (disk) tiers only, where the next `strato serve` or Lambda instance on the
same volume finds the model. The same loader and verification as the server are used,
so a pulled model is exactly as trustworthy as a served one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from core.catalog.references import DigestRef, FileRef, ObjectRef, Reference
from core.catalog.resolver import Resolver
from core.config import Settings
from core.errors import BadRequest, ModelNotFound
from core.serving.load_timings import LoadTimings
from core.serving.loader_setup import build_loader
from tiers import remote
from tiers.base import BlobPlan, find_digests
from tiers.fetch import Progress
from tiers.gguf_header import GGUFHeader, read_header_file
from tiers.gguf_header import read_header as parse_header
from tiers.loader import Loader


@dataclass(frozen=True)
class PullResult:
    model: str
    digest: str | None
    size: int
    source: str          # "remote", a tier name that already had it, or "file"
    tiers: tuple[str, ...]
    seconds: float
    timings: LoadTimings | None = None     # manifest and fetch phases (None: a file)


def _close(loader: Loader) -> None:
    for tier in loader.tiers:
        tier.close()


def pull(settings: Settings, text: str,
         on_progress: Callable[[Progress], None] | None = None) -> PullResult:
    """Fetch `text` into the persistent tiers, verified; re-resolves tags (no pinning)
    and revalidates plain URLs (a changed object is fetched again)."""
    resolver = Resolver(settings)
    ref = resolver.parse(text)
    timings = LoadTimings(str(ref))
    timings.take_process_phases()
    with timings.timed("manifest"):
        source = resolver.resolve(ref, refresh=True)
    if source.plan is None:
        assert source.path is not None
        return PullResult(str(ref), None, os.path.getsize(source.path), "file", (), 0.0)
    loader, _ = build_loader(settings)
    try:
        targets = [t.name for t in loader.tiers if t.persistent]
        if not targets:
            raise BadRequest("nothing to pull into: STRATO_TIERS has no disk tier "
                             f"({settings.tiers_spec()!r})")
        # A plain URL has no digest to pin: ask the remote whether the object changed
        # (size and ETag) instead of trusting the copy a tier already holds.
        revalidate = source.plan.digest is None
        with loader.load(source.plan, on_progress=on_progress, targets=targets,
                         revalidate=revalidate) as handle:
            held = tuple(t.name for t in loader.tiers if t.contains(handle.digest))
            timings.source = handle.source
            timings.take_process_phases()       # importing s3fs happened in the fetch
            timings.add_fetch(handle.fetch)
            timings.log()
            timings.observe()
            return PullResult(str(ref), handle.digest, handle.size, handle.source, held,
                              handle.seconds, timings)
    finally:
        _close(loader)


def remove_local(settings: Settings, text: str) -> list[str]:
    """Evict a model from every local tier; returns the tiers it was removed from.

    The digest comes from the tiers' own metadata (name, source URL) first, so removing
    a model never needs the registry to be reachable.
    """
    resolver = Resolver(settings)
    ref = resolver.parse(text)
    loader, _ = build_loader(settings)
    try:
        digests = _local_digests(loader, ref)
        removed = [t.name for d in digests for t in loader.tiers if t.evict(d)]
    finally:
        _close(loader)
    if not removed:
        raise ModelNotFound(f"{ref} is not in any local tier", param="model")
    return removed


def _local_digests(loader: Loader, ref: Reference) -> set[str]:
    if isinstance(ref, DigestRef):
        return {ref.hex}
    wanted = {str(ref)}
    if isinstance(ref, ObjectRef):
        wanted.add(ref.url)
    return set(find_digests(loader.tiers, names=wanted, sources=wanted))


def read_header(text: str, settings: Settings) -> tuple[GGUFHeader, int]:
    """(GGUF header, raw size) of any reference, reading only the header's bytes.

    Local files (and the bundled model) are read directly; remote objects with ranged
    GETs; blobs stored as zstd frames decompress just the frames the header spans.
    """
    resolver = Resolver(settings)
    ref = resolver.parse(text)
    if isinstance(ref, FileRef) and not os.path.isfile(ref.path):
        raise ModelNotFound(f"model file not found: {ref.path}", param="model")
    source = resolver.resolve(ref)
    if source.path is not None:
        return read_header_file(source.path), os.path.getsize(source.path)
    plan = source.plan
    assert plan is not None, "a source has a path or a plan"
    size = plan.size if plan.size is not None else remote.info(plan.url).size
    if plan.compression == "zstd":
        return parse_header(_zstd_reader(plan), size), size
    return parse_header(lambda s, e: bytes(remote.read_range(plan.url, s, e)), size), size


def _zstd_reader(plan: BlobPlan) -> Callable[[int, int], bytes]:
    """Raw ranged reads over a blob stored as one zstd frame per chunk: the frames a
    range spans are fetched with one ranged read and decompressed."""
    import zstandard

    offsets, chunk, size = plan.frame_offsets, plan.chunk_size, plan.size
    assert offsets is not None and size is not None, "BlobPlan checks zstd plans have both"

    def read(start: int, end: int) -> bytes:
        end = min(end, size)
        if start >= end:
            return b""
        first, last = start // chunk, (end - 1) // chunk
        lo, hi = offsets[first], offsets[last + 1]
        frames = remote.read_range(plan.url, lo, hi)
        # decompressobj: frames without a content-size field decompress too.
        raw = b"".join(zstandard.ZstdDecompressor().decompressobj().decompress(
            frames[offsets[i] - lo:offsets[i + 1] - lo]) for i in range(first, last + 1))
        return raw[start - first * chunk:end - first * chunk]

    return read
