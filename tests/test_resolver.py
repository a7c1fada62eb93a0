"""From a reference to a Source against a real registry directory: what each kind of
reference resolves to, tags pinned until an explicit refresh, digests with or without a
manifest, and a clear 404 for what does not exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.catalog.references import DigestRef, RegistryRef, parse_name_tag
from core.catalog.registry import Registry
from core.catalog.resolver import Resolver
from core.config import Settings
from core.errors import InvalidReference, ModelNotFound
from tests.tiny_gguf import write_tiny_gguf

CHUNK = 4096


@pytest.fixture
def world(tmp_path: Path) -> tuple[Resolver, Registry, list[Path]]:
    models = [write_tiny_gguf(tmp_path / f"m{i}.gguf", blocks=2, seed=i) for i in range(2)]
    registry = Registry(str(tmp_path / "registry"), chunk_size=CHUNK)
    registry.push(str(models[0]), parse_name_tag("tiny:v1"))
    resolver = Resolver(Settings(registry=registry.root, chunk=CHUNK,
                                 allowed_sources=("file", "s3")))
    return resolver, registry, models


def test_a_tag_resolves_to_its_manifest_and_stays_pinned(world) -> None:
    resolver, registry, models = world
    ref = resolver.parse("tiny:v1")
    first = resolver.resolve(ref)
    assert first.manifest is not None and first.plan is not None and first.path is None
    assert first.plan.digest == first.digest == first.manifest.digest.removeprefix("blake3:")
    assert first.plan.url.startswith(registry.root) and first.plan.chunk_size == CHUNK
    registry.push(str(models[1]), parse_name_tag("tiny:v1"))        # the tag moves on
    assert resolver.resolve(ref).digest == first.digest              # pinned in-process
    moved = resolver.resolve(ref, refresh=True)
    assert moved.digest != first.digest
    assert resolver.resolve(ref).digest == moved.digest              # the new pin holds
    assert isinstance(ref, RegistryRef) and resolver.pinned(ref) == moved.manifest


def test_a_digest_resolves_with_or_without_a_manifest(world) -> None:
    resolver, registry, models = world
    pushed = resolver.resolve(resolver.parse("tiny:v1"))
    assert pushed.manifest is not None
    ref = resolver.parse(f"tiny@{pushed.manifest.digest}")
    assert ref == DigestRef("tiny", pushed.digest)
    by_digest = resolver.resolve(ref)
    assert by_digest.digest == pushed.digest and by_digest.manifest == pushed.manifest
    registry.push(str(models[1]), parse_name_tag("tiny:v1"))
    fresh = Resolver(resolver.settings)                              # a new process
    orphan = fresh.resolve(ref)
    assert orphan.manifest is None and orphan.digest == pushed.digest   # blob, no manifest
    with pytest.raises(ModelNotFound, match="no blob"):
        fresh.resolve(DigestRef("tiny", "0" * 64))


def test_files_and_objects(world, tmp_path: Path) -> None:
    resolver, _, models = world
    local = resolver.resolve(resolver.parse(str(models[0])))
    assert local.path == str(models[0]) and local.plan is None and local.digest is None
    with pytest.raises(ModelNotFound, match="model file not found"):
        resolver.resolve(resolver.parse(str(tmp_path / "absent.gguf")))
    remote = resolver.resolve(resolver.parse("s3://bucket/dir/model.gguf"))
    assert remote.plan is not None and remote.plan.url == "s3://bucket/dir/model.gguf"
    assert remote.plan.digest is None and remote.plan.chunk_size == CHUNK
    assert remote.name == "model"
    with pytest.raises(InvalidReference):                            # a caller's: not listed
        resolver.parse_request("https://example.com/model.gguf")
    assert resolver.parse("https://example.com/model.gguf")          # the operator's: any


def test_unknown_names_are_404s_and_only_the_default_registry_implies_a_model(world) -> None:
    resolver, _, _ = world
    with pytest.raises(ModelNotFound) as info:
        resolver.resolve(resolver.parse("tiny:v9"))
    assert info.value.status == 404
    assert resolver.default_model() is None                          # a configured registry
    named = Resolver(Settings(registry=resolver.registry.root, model="tiny:v1"))
    assert named.default_model() == "tiny:v1"


def test_a_cached_blob_resolves_without_reading_the_registry(world) -> None:
    resolver, registry, _ = world
    digest = resolver.resolve(resolver.parse("tiny:v1")).digest
    assert digest is not None
    os.rename(registry.root, registry.root + ".gone")
    local = resolver.local_plan(resolver.parse("tiny:v1"), digest)
    assert local.plan is not None and local.plan.digest == digest
    assert local.plan.url.endswith(f"blobs/blake3/{digest}") and local.manifest is None
