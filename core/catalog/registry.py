"""The registry: models by name in any fsspec root (s3://, gs://, az://, file://, a path).

Layout (DESIGN.md):

    <root>/manifests/<name>/<tag>.json   small JSON, the only mutable objects
    <root>/blobs/blake3/<hex>            immutable bytes (raw GGUF, or zstd frames)

Two rules make it safe without locks: blobs are content-addressed, so two pushes of the
same bytes write the same key (and the second skips the upload); and the manifest is
written last, so a reader that finds a manifest finds a complete blob behind it. A push
killed half-way leaves at most an unreferenced blob, never a manifest naming a missing one.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from core.catalog import signing
from core.catalog.manifest import Manifest, Variant, header_summary, loads
from core.catalog.references import DigestRef, RegistryRef
from core.errors import BadRequest, InvalidManifest, ModelNotFound
from tiers import remote
from tiers.errors import ObjectNotFound
from tiers.gguf_header import read_header_file

log = logging.getLogger("strato.registry")

Progress = Callable[[str, int, int], None]
"""(phase, done bytes, total bytes): phase is 'hash' or 'upload'."""

ZSTD_LEVEL = 3  # fast to compress, ~as fast as raw to decompress; quantized weights gain little


@dataclass(frozen=True)
class PushResult:
    manifest: Manifest
    uploaded: bool        # False: identical bytes were already in the registry
    manifest_url: str
    blob_url: str


@dataclass(frozen=True)
class Digests:
    """What hashing a file produced: the manifest's integrity fields and the stored blob."""

    digest: str                    # blake3:<hex> of the raw file
    chunks: tuple[str, ...]        # blake3 hex of each raw chunk
    blob: str                      # blake3:<hex> of the stored bytes
    frame_offsets: tuple[int, ...]  # zstd only: n_chunks + 1 offsets into the blob
    stored_path: str               # the file to upload (the original, or the zstd blob)


def hash_file(path: str, chunk_size: int, *, compress: str = "none", workers: int = 4,
              tmp_dir: str | None = None, progress: Progress | None = None) -> Digests:
    """BLAKE3 of the file and of each chunk; with zstd also the framed blob and its digest.

    Steps: chunks are read with `pread` and hashed (and compressed, one frame per chunk)
    by `workers` threads in bounded batches, so memory stays at a few chunks whatever the
    model size; results are consumed in offset order to build the blob digest and the
    frame offsets. The whole-file digest is one multi-threaded pass over an mmap.
    """
    import blake3

    size = os.path.getsize(path)
    whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
    whole.update_mmap(path)
    n = -(-size // chunk_size)
    chunk_hex: list[str] = []
    offsets = [0]
    blob_hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    out = None
    if compress == "zstd":
        fd_out, stored = tempfile.mkstemp(prefix="strato-push-", suffix=".zst", dir=tmp_dir)
        out = os.fdopen(fd_out, "wb")
    elif compress != "none":
        raise ValueError(f"unknown compression {compress!r} (none or zstd)")
    else:
        stored = path
    fd = os.open(path, os.O_RDONLY)

    def work(index: int) -> tuple[str, bytes | None]:
        data = os.pread(fd, chunk_size, index * chunk_size)
        digest = blake3.blake3(data).hexdigest()
        if compress == "zstd":
            import zstandard

            return digest, zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        return digest, None

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            batch = max(1, workers) * 2
            for first in range(0, n, batch):
                for digest, frame in pool.map(work, range(first, min(n, first + batch))):
                    chunk_hex.append(digest)
                    if frame is not None and out is not None:
                        out.write(frame)
                        blob_hasher.update(frame)
                        offsets.append(offsets[-1] + len(frame))
                if progress is not None:
                    progress("hash", min(size, (first + batch) * chunk_size), size)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
            out.close()
    except BaseException:
        if out is not None:
            out.close()
            os.unlink(stored)
        raise
    finally:
        os.close(fd)
    digest = f"blake3:{whole.hexdigest()}"
    if compress == "zstd":
        return Digests(digest, tuple(chunk_hex), f"blake3:{blob_hasher.hexdigest()}",
                       tuple(offsets), stored)
    return Digests(digest, tuple(chunk_hex), digest, (), stored)


class Registry:
    """Push, read, list and remove models under one root. Thread-safe (stateless)."""

    def __init__(self, root: str, *, chunk_size: int = 8 << 20, streams: int = 16,
                 trusted_keys: tuple[str, ...] = ()) -> None:
        if "://" not in root:
            root = os.path.abspath(os.path.expanduser(root))
        self.root = root.rstrip("/") or "/"
        self.chunk_size = chunk_size
        self.streams = streams
        self.trusted_keys = trusted_keys     # STRATO_TRUSTED_KEYS: signed manifests only

    def url(self, key: str) -> str:
        return f"{self.root}/{key}"

    def manifest_url(self, ref: RegistryRef) -> str:
        return self.url(ref.manifest_key)

    # -- push -----------------------------------------------------------------------

    def push(self, path: str, ref: RegistryRef, *, compress: str = "none",
             progress: Progress | None = None, sign_key: str | None = None) -> PushResult:
        """Publish a local GGUF as `ref`.

        Steps: parse the header (a file that is not a GGUF is refused before any upload),
        hash the file and each chunk (compressing zstd frames when asked), upload the
        blob unless an object of the same digest and size is already there (identical
        bytes under two names are stored once), then write the manifest last (signed
        with `sign_key`, base64 Ed25519, when given).
        """
        header = read_header_file(path)
        summary = header_summary(header)
        size = os.path.getsize(path)
        digests = hash_file(path, self.chunk_size, compress=compress,
                            workers=min(8, os.cpu_count() or 1), progress=progress)
        manifest = Manifest(
            name=ref.name, tag=ref.tag, digest=digests.digest, size=size,
            chunk_size=self.chunk_size, chunks=digests.chunks, gguf=summary,
            compression=compress, frame_offsets=digests.frame_offsets, blob=digests.blob,
            created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if sign_key is not None:
            manifest = signing.sign(manifest, sign_key)
        blob_url = self.url(manifest.blob_key)
        try:
            stored_size = os.path.getsize(digests.stored_path)
            uploaded = not self._has_blob(blob_url, stored_size)
            if uploaded:
                log.info("uploading %s (%d bytes) to %s", path, stored_size, blob_url)
                remote.put_file(digests.stored_path, blob_url, concurrency=self.streams,
                                part_size=max(self.chunk_size, 8 << 20),
                                on_progress=(lambda done: progress("upload", done,
                                                                   stored_size))
                                if progress else None)
            else:
                log.info("blob %s already present: skipping upload", blob_url)
                if progress is not None:
                    progress("upload", stored_size, stored_size)
        finally:
            if digests.stored_path != path:
                os.unlink(digests.stored_path)
        manifest_url = self.manifest_url(ref)
        remote.write_bytes(manifest_url, manifest.to_json())
        return PushResult(manifest, uploaded, manifest_url, blob_url)

    def add_variant(self, base: RegistryRef, variant: Manifest, *,
                    sign_key: str | None = None) -> Manifest:
        """List `variant` (another tag of the same name, fewer bytes) in `base`'s
        manifest, so that a load of `base` that runs out of memory falls back to it.

        Only `base`'s manifest is rewritten (manifests are the registry's one mutable
        object); the entry pins the variant's digest, so a later push to the variant's
        tag cannot change what the fallback serves. Variants stay sorted largest first:
        the order the fallback tries them in. A signed `base` must be signed again.
        """
        if variant.name != base.name:
            raise BadRequest(f"{variant.name}:{variant.tag} cannot be a variant of {base}: "
                             "variants are other tags of the same name")
        manifest = self.manifest(base)
        if variant.size >= manifest.size:
            raise BadRequest(f"{variant.name}:{variant.tag} ({variant.size} bytes) is not "
                             f"smaller than {base} ({manifest.size} bytes)")
        if manifest.signature is not None and sign_key is None:
            raise BadRequest(f"{base} is signed: listing a variant rewrites its manifest, "
                             "so pass the signing key (--sign-key) to sign it again")
        entry = Variant(tag=variant.tag, size=variant.size,
                        file_type=variant.gguf.file_type, digest=variant.digest)
        others = [v for v in manifest.variants if v.tag != variant.tag]
        updated = replace(manifest, variants=tuple(sorted([*others, entry],
                                                          key=lambda v: -v.size)),
                          signature=None)
        if sign_key is not None:
            updated = signing.sign(updated, sign_key)
        remote.write_bytes(self.manifest_url(base), updated.to_json())
        return updated

    def _has_blob(self, blob_url: str, size: int) -> bool:
        try:
            return remote.info(blob_url).size == size
        except ObjectNotFound:
            return False

    # -- read -----------------------------------------------------------------------

    def manifest(self, ref: RegistryRef) -> Manifest:
        """The manifest for `ref`, validated; ModelNotFound (404) names what to push."""
        url = self.manifest_url(ref)
        try:
            raw = remote.read_bytes(url)
        except ObjectNotFound:
            raise ModelNotFound(f"model {ref} not found in registry {self.root} "
                                f"(no {ref.manifest_key}; publish it with "
                                f"`strato push FILE {ref}`)", param="model") from None
        manifest = loads(raw, source=url)
        signing.verify(manifest, self.trusted_keys)
        return manifest

    def by_digest(self, ref: DigestRef) -> Manifest | None:
        """A manifest of `ref.name` whose digest is `ref.digest`, if any tag has it,
        verified like `manifest`: one that fails is skipped for another tag of the same
        bytes, and its refusal raised only when none verifies."""
        refused: InvalidManifest | None = None
        for manifest in self._manifests_under(f"manifests/{ref.name}", recurse=False):
            if manifest.digest == ref.digest:
                try:
                    signing.verify(manifest, self.trusted_keys)
                except InvalidManifest as exc:
                    refused = exc
                    continue
                return manifest
        if refused is not None:
            raise refused
        return None

    def has_blob(self, hex_digest: str) -> bool:
        return remote.exists(self.url(f"blobs/blake3/{hex_digest}"))

    def list(self) -> list[Manifest]:
        """Every manifest in the registry, sorted by name and tag."""
        found = list(self._manifests_under("manifests", recurse=True))
        return sorted(found, key=lambda m: (m.name, m.tag))

    def _manifests_under(self, key: str, *, recurse: bool) -> Iterator[Manifest]:
        for entry in remote.ls(self.url(key)):
            if entry.endswith(".json"):
                # A manifest another process is deleting right now is simply not listed.
                try:
                    yield loads(remote.read_bytes(entry), source=entry)
                except ObjectNotFound:
                    continue
            elif recurse and not entry.endswith(".partial"):
                yield from self._manifests_under(_key_of(self.root, entry), recurse=True)

    # -- remove ---------------------------------------------------------------------

    def remove(self, ref: RegistryRef) -> tuple[Manifest, bool]:
        """Delete `ref`'s manifest, then its blob if no other manifest still names it.

        Returns (the removed manifest, whether the blob went too). A push of the same
        bytes racing this call can lose its blob; the manifest check on load then says
        so, and pushing again restores it (the upload is not skipped when it is absent).
        """
        manifest = self.manifest(ref)
        remote.rm(self.manifest_url(ref))
        still_used = any(m.blob_digest == manifest.blob_digest for m in self.list())
        if not still_used:
            try:
                remote.rm(self.url(manifest.blob_key))
            except ObjectNotFound:
                pass
        return manifest, not still_used


def _key_of(root: str, url: str) -> str:
    """The registry key of a URL that `remote.ls` returned for something under `root`."""
    def bare(u: str) -> str:
        if u.startswith("file://"):
            return u[len("file://"):]
        return u.split("://", 1)[1] if "://" in u else u

    base, full = bare(root).rstrip("/"), bare(url)
    if not full.startswith(base + "/"):
        raise ValueError(f"{url} is not under {root}")
    return full[len(base) + 1:]
