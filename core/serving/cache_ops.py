"""The local model store outside a server: what `strato pull`, `rm` and `inspect` do.

A CLI process is short-lived, so its RAM tier would die with it: `pull` fetches into
the persistent (disk) tiers only, where the next `strato serve` or Lambda instance on the
same volume finds the model. The same loader and verification as the server are used,
so a pulled model is exactly as trustworthy as a served one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from core.catalog.references import DigestRef, FileRef, Reference, RegistryRef
from core.catalog.resolver import Resolver
from core.config import Settings
from core.errors import BadRequest, ModelNotFound
from core.serving.loader_setup import build_loader
from tiers import remote
from tiers.fetch import Progress
from tiers.gguf_header import GGUFHeader, read_header as parse_header, read_header_file


@dataclass(frozen=True)
class PullResult:
    model: str
    digest: str | None
    size: int
    source: str          # "remote", a tier name that already had it, or "file"
    tiers: tuple[str, ...]
    seconds: float


def _close(loader: Any) -> None:
    for tier in loader.tiers:
        if hasattr(tier, "close"):
            tier.close()


def pull(settings: Settings, text: str,
         on_progress: Callable[[Progress], None] | None = None) -> PullResult:
    """Fetch `text` into the persistent tiers, verified; re-resolves tags (no pinning)
    and revalidates plain URLs (a changed object is fetched again)."""
    import os

    resolver = Resolver(settings)
    ref = resolver.parse(text)
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
            return PullResult(str(ref), handle.digest, handle.size, handle.source, held,
                              handle.seconds)
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


def _local_digests(loader: Any, ref: Reference) -> set[str]:
    if isinstance(ref, DigestRef):
        return {ref.hex}
    wanted = {str(ref)}
    if not isinstance(ref, RegistryRef):
        wanted.add(getattr(ref, "url", str(ref)))
    return {e.digest for t in loader.tiers for e in t.entries()
            if e.meta.get("name") in wanted or e.meta.get("source") in wanted}


def read_header(text: str, settings: Settings) -> tuple[GGUFHeader, int]:
    """(GGUF header, raw size) of any reference, reading only the header's bytes.

    Registry models read the first chunks of their blob (decompressing zstd frames);
    plain objects are read with ranged GETs; local files directly.
    """
    resolver = Resolver(settings)
    ref = resolver.parse(text)
    if isinstance(ref, FileRef):
        import os

        if not os.path.isfile(ref.path):
            raise ModelNotFound(f"model file not found: {ref.path}", param="model")
        return read_header_file(ref.path), os.path.getsize(ref.path)
    source = resolver.resolve(ref)
    assert source.plan is not None
    plan, m = source.plan, source.manifest
    if m is not None and m.compression == "zstd":
        import zstandard

        def read(start: int, end: int) -> bytes:
            first, last = start // m.chunk_size, (max(end, start + 1) - 1) // m.chunk_size
            last = min(last, len(m.chunks) - 1)
            lo, hi = m.stored_range(first)[0], m.stored_range(last)[1]
            frames = remote.read_range(plan.url, lo, hi)
            dctx = zstandard.ZstdDecompressor()
            raw = b"".join(dctx.decompress(frames[a - lo:b - lo], max_output_size=m.chunk_size)
                           for a, b in (m.stored_range(i) for i in range(first, last + 1)))
            offset = first * m.chunk_size
            return raw[start - offset:end - offset]

        return parse_header(read, m.size), m.size
    size = plan.size if plan.size is not None else remote.info(plan.url).size
    return parse_header(lambda s, e: remote.read_range(plan.url, s, e), size), size
