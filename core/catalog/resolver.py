"""From a parsed reference to what the loader fetches: a `Source`.

Resolution is the only step between a request and the tiers that may read the registry,
so it is also where tags are pinned: once `gemma3:270m` resolved to a digest in this
process it keeps that digest (like a container image pulled by tag) until an explicit
`pull`/`prefetch` re-resolves it. That is what lets a swap between two cached models
never touch the remote, and a request never sees a model change under the same name
mid-conversation.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from core.catalog.manifest import Manifest, to_blob_plan
from core.catalog.references import (
    DigestRef,
    FileRef,
    ObjectRef,
    Reference,
    RegistryRef,
    RequestPolicy,
    parse,
    parse_request,
)
from core.catalog.registry import Registry
from core.config import Settings, default_cache_dir
from core.errors import InvalidManifest, InvalidReference, ModelNotFound
from tiers import remote
from tiers.base import BlobPlan

log = logging.getLogger("strato.models")

DEFAULT_REF = RegistryRef("gemma3", "270m")


@dataclass(frozen=True)
class Source:
    """Where one model's bytes are.

    `plan` is set for everything fetched through the tiers; `path` for a local file
    loaded in place (no copy: the page cache is its RAM tier). `manifest` is set for
    registry models (GGUF summary, layer sizes for VRAM placement, variants).
    """

    key: str
    name: str
    plan: BlobPlan | None = None
    path: str | None = None
    manifest: Manifest | None = None

    @property
    def digest(self) -> str | None:
        return self.plan.digest if self.plan is not None else None


def default_registry_root() -> str:
    """The local registry that the bundled model is published into when none is set."""
    return str(default_cache_dir() / "registry")


class Resolver:
    """Parses references and resolves them to Sources; caches tag -> manifest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.is_default_root = settings.registry is None
        self.registry = Registry(settings.registry or default_registry_root(),
                                 chunk_size=settings.chunk, streams=settings.streams,
                                 trusted_keys=tuple(settings.trusted_keys))
        self._pinned: dict[str, Manifest] = {}
        self._lock = threading.Lock()
        self.policy = RequestPolicy(tuple(settings.allowed_sources), self._default_key())

    def default_model(self) -> str | None:
        """STRATO_MODEL, else the bundled Gemma when no registry was configured (a
        configured registry has no implied model: requests must name one)."""
        if self.settings.model:
            return self.settings.model
        return str(DEFAULT_REF) if self.is_default_root else None

    def _default_key(self) -> str | None:
        default = self.default_model()
        try:
            return str(parse(default)) if default else None
        except InvalidReference:
            return None    # reported when the default is first used

    def parse(self, text: str) -> Reference:
        """The operator's reference (settings, CLI): any form, no allow-list."""
        return parse(text)

    def parse_request(self, text: str) -> Reference:
        """A caller's reference, held to the request policy (references.parse_request).

        An HTTP URL a caller named is registered with tiers.remote as public-only, so
        every connection made for it (after DNS, after each redirect) is checked too.
        """
        ref = parse_request(text, self.policy)
        if isinstance(ref, ObjectRef) and ref.scheme in ("http", "https") \
                and str(ref) != self.policy.default_key:
            remote.restrict_to_public(ref.url, self.policy.private_hosts())
        return ref

    def resolve(self, ref: Reference, *, refresh: bool = False) -> Source:
        """Blocking: may read one manifest from the registry (never blob bytes).

        Raises ModelNotFound for an unknown name:tag, digest or local file.
        """
        if isinstance(ref, RegistryRef):
            return self._from_manifest(str(ref), self._manifest(ref, refresh))
        if isinstance(ref, DigestRef):
            return self._digest(ref)
        if isinstance(ref, ObjectRef):
            return Source(str(ref), ref.name,
                          plan=BlobPlan(url=ref.url, chunk_size=self.settings.chunk,
                                        name=str(ref)))
        if isinstance(ref, FileRef):
            if not os.path.isfile(ref.path):
                raise ModelNotFound(f"model file not found: {ref.path}", param="model")
            return Source(str(ref), ref.name, path=ref.path)
        raise TypeError(f"not a reference: {ref!r}")

    def pinned(self, ref: RegistryRef) -> Manifest | None:
        with self._lock:
            return self._pinned.get(str(ref))

    def _manifest(self, ref: RegistryRef, refresh: bool) -> Manifest:
        key = str(ref)
        with self._lock:
            if not refresh and key in self._pinned:
                return self._pinned[key]
        try:
            manifest = self.registry.manifest(ref)
        except ModelNotFound:
            if not (self.is_default_root and ref == DEFAULT_REF):
                raise
            manifest = publish_default(self.registry)
        with self._lock:
            self._pinned[key] = manifest
        return manifest

    def _from_manifest(self, key: str, manifest: Manifest) -> Source:
        return Source(key, manifest.name, plan=to_blob_plan(manifest, self.registry.root),
                      manifest=manifest)

    def _digest(self, ref: DigestRef) -> Source:
        with self._lock:
            pinned = next((m for m in self._pinned.values()
                           if m.digest == ref.digest and m.name == ref.name), None)
        manifest = pinned or self.registry.by_digest(ref)
        if manifest is not None:
            return self._from_manifest(str(ref), manifest)
        if not self.registry.has_blob(ref.hex):
            raise ModelNotFound(f"no blob {ref.digest} in registry {self.registry.root}",
                                param="model")
        if self.registry.trusted_keys:
            raise InvalidManifest(f"no signed manifest names {ref.digest}, and "
                                  "STRATO_TRUSTED_KEYS requires one")
        # A blob without a manifest (its tag moved on): still exact, verified as a whole.
        return Source(str(ref), ref.name,
                      plan=BlobPlan(url=self.registry.url(ref.blob_key), digest=ref.hex,
                                    chunk_size=self.settings.chunk, name=str(ref)))

    def local_plan(self, ref: Reference, digest: str) -> Source:
        """A Source for a blob already in a local tier: no registry read at all."""
        url = self.registry.url(f"blobs/blake3/{digest}")
        return Source(str(ref), ref.name,
                      plan=BlobPlan(url=url, digest=digest, chunk_size=self.settings.chunk,
                                    name=str(ref)))


def publish_default(registry: Registry) -> Manifest:
    """Push the bundled Gemma into `registry` as gemma3:270m (idempotent).

    So the default path exercises the same manifest, chunk verification and tiers as
    any cloud registry: `make run` on a laptop is a real cold start, only closer.
    """
    from core.catalog.bundled import default_model_path

    path = default_model_path()
    log.info("publishing the bundled model %s as %s in %s", path, DEFAULT_REF, registry.root)
    return registry.push(str(path), DEFAULT_REF).manifest
