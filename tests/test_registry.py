"""The registry against a real directory root (the cloud roots run in test_e2e_clouds.py):
push computes the digests and summary, dedups identical bytes, writes the manifest last;
list, by-digest lookup, remove with blob garbage collection, and typed refusals."""

from __future__ import annotations

import json
import os

import blake3
import pytest
import zstandard

from core.catalog.manifest import layer_order
from core.catalog.references import DigestRef, RegistryRef, parse_name_tag
from core.catalog.registry import Registry, hash_file
from core.errors import ModelNotFound, status_of
from tests.test_manifest import write_tiny_gguf
from tiers.errors import CorruptModel, StorageError

CHUNK = 4096


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=4)
    return path


@pytest.fixture
def registry(tmp_path):
    return Registry(str(tmp_path / "registry"), chunk_size=CHUNK, streams=4)


def blobs_in(registry: Registry) -> list[str]:
    d = os.path.join(registry.root, "blobs", "blake3")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_push_writes_blob_and_manifest_with_true_digests(registry, tiny):
    result = registry.push(str(tiny), parse_name_tag("tiny:v1"))
    m = result.manifest
    data = tiny.read_bytes()
    assert m.digest == f"blake3:{blake3.blake3(data).hexdigest()}"
    assert m.size == len(data) and m.chunk_size == CHUNK
    assert list(m.chunks) == [blake3.blake3(data[i:i + CHUNK]).hexdigest()
                              for i in range(0, len(data), CHUNK)]
    assert result.uploaded
    blob = os.path.join(registry.root, "blobs", "blake3", m.hex)
    with open(blob, "rb") as f:
        assert f.read() == data
    doc = json.loads(open(os.path.join(registry.root, "manifests/tiny/v1.json")).read())
    assert doc["digest"] == m.digest
    assert doc["gguf"]["architecture"] == "llama" and doc["gguf"]["block_count"] == 4
    assert registry.manifest(RegistryRef("tiny", "v1")) == m
    assert sorted(layer_order(m)) == list(range(len(m.chunks)))


def test_identical_bytes_under_two_names_are_stored_once(registry, tiny):
    first = registry.push(str(tiny), parse_name_tag("tiny:v1"))
    second = registry.push(str(tiny), parse_name_tag("other/alias:prod"))
    assert first.uploaded and not second.uploaded
    assert blobs_in(registry) == [first.manifest.hex]
    assert [(m.name, m.tag) for m in registry.list()] == [("other/alias", "prod"),
                                                          ("tiny", "v1")]


def test_a_truncated_blob_in_the_registry_is_uploaded_again(registry, tiny):
    m = registry.push(str(tiny), parse_name_tag("tiny:v1")).manifest
    blob = os.path.join(registry.root, "blobs", "blake3", m.hex)
    with open(blob, "r+b") as f:
        f.truncate(100)
    assert registry.push(str(tiny), parse_name_tag("tiny:v2")).uploaded
    assert os.path.getsize(blob) == m.size


def test_zstd_push_stores_one_frame_per_chunk(registry, tiny):
    m = registry.push(str(tiny), parse_name_tag("tiny:z"), compress="zstd").manifest
    data = tiny.read_bytes()
    stored = open(os.path.join(registry.root, m.blob_key), "rb").read()
    assert m.compression == "zstd" and m.blob != m.digest
    assert m.blob == f"blake3:{blake3.blake3(stored).hexdigest()}"
    assert len(m.frame_offsets) == len(m.chunks) + 1 and m.frame_offsets[-1] == len(stored)
    dctx = zstandard.ZstdDecompressor()
    for i in range(len(m.chunks)):
        a, b = m.stored_range(i)
        lo, hi = m.chunk_range(i)
        assert dctx.decompress(stored[a:b]) == data[lo:hi]
    # The raw push of the same file is a different blob (raw bytes), not a clash.
    raw = registry.push(str(tiny), parse_name_tag("tiny:raw")).manifest
    assert sorted(blobs_in(registry)) == sorted([m.blob.split(":")[1], raw.hex])


def test_hash_file_without_registry_matches_one_pass(tmp_path):
    path = tmp_path / "bytes.bin"
    data = os.urandom(CHUNK * 5 + 123)
    path.write_bytes(data)
    seen = []
    d = hash_file(str(path), CHUNK, workers=3, progress=lambda *a: seen.append(a))
    assert d.digest == f"blake3:{blake3.blake3(data).hexdigest()}"
    assert len(d.chunks) == 6 and d.stored_path == str(path)
    assert seen[-1] == ("hash", len(data), len(data))


def test_unknown_name_is_a_404_that_says_how_to_fix_it(registry):
    with pytest.raises(ModelNotFound) as info:
        registry.manifest(RegistryRef("nope", "v9"))
    assert "nope:v9" in info.value.message and "strato push" in info.value.message
    assert status_of(info.value)[0] == 404


def test_not_a_gguf_is_refused_before_anything_is_written(registry, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOPE" + os.urandom(5000))
    with pytest.raises(CorruptModel):
        registry.push(str(junk), parse_name_tag("junk:1"))
    assert not os.path.exists(registry.root)


def test_manifest_is_written_last(registry, tiny):
    # Make the blob upload fail (a file where the blobs directory should be): the push
    # raises and no manifest points at a missing blob.
    os.makedirs(registry.root)
    open(os.path.join(registry.root, "blobs"), "w").close()
    with pytest.raises(StorageError):
        registry.push(str(tiny), parse_name_tag("tiny:v1"))
    assert not os.path.exists(os.path.join(registry.root, "manifests"))
    assert registry.list() == []


def test_lookup_by_digest(registry, tiny):
    m = registry.push(str(tiny), parse_name_tag("tiny:v1")).manifest
    assert registry.by_digest(DigestRef("tiny", m.hex)) == m
    assert registry.by_digest(DigestRef("tiny", "0" * 64)) is None
    assert registry.by_digest(DigestRef("absent", m.hex)) is None
    assert registry.has_blob(m.hex) and not registry.has_blob("0" * 64)


def test_remove_keeps_shared_blobs_until_the_last_name_goes(registry, tiny):
    m = registry.push(str(tiny), parse_name_tag("tiny:v1")).manifest
    registry.push(str(tiny), parse_name_tag("tiny:v2"))
    removed, blob_gone = registry.remove(RegistryRef("tiny", "v1"))
    assert removed == m and not blob_gone
    assert blobs_in(registry) == [m.hex]
    _, blob_gone = registry.remove(RegistryRef("tiny", "v2"))
    assert blob_gone and blobs_in(registry) == []
    assert registry.list() == []
    with pytest.raises(ModelNotFound):
        registry.remove(RegistryRef("tiny", "v2"))


def test_corrupt_manifest_is_refused_with_its_url(registry, tiny):
    registry.push(str(tiny), parse_name_tag("tiny:v1"))
    path = os.path.join(registry.root, "manifests/tiny/v1.json")
    doc = json.loads(open(path).read())
    doc["chunks"] = doc["chunks"][:-1]
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(Exception) as info:
        registry.manifest(RegistryRef("tiny", "v1"))
    # The registry's fault, not the caller's: a 5xx (it was a 400 invalid_request_error).
    assert "manifests/tiny/v1.json" in str(info.value)
    assert status_of(info.value)[:2] == (502, "server_error")


@pytest.mark.parametrize("fixture", ["s3_bucket", "gcs_bucket", "az_container"])
def test_registry_on_each_cloud(fixture, request, tiny):
    """The same operations against each emulator, through the SDKs' standard variables."""
    root = f"{request.getfixturevalue(fixture)}/models"
    registry = Registry(root, chunk_size=CHUNK, streams=4)
    raw = registry.push(str(tiny), parse_name_tag("ns/tiny:v1"))
    z = registry.push(str(tiny), parse_name_tag("ns/tiny:z"), compress="zstd")
    again = registry.push(str(tiny), parse_name_tag("copy:v1"))
    assert raw.uploaded and z.uploaded and not again.uploaded
    assert [(m.name, m.tag) for m in registry.list()] == [("copy", "v1"), ("ns/tiny", "v1"),
                                                          ("ns/tiny", "z")]
    assert registry.manifest(RegistryRef("ns/tiny", "z")) == z.manifest
    assert registry.by_digest(DigestRef("ns/tiny", raw.manifest.hex)) is not None
    assert registry.remove(RegistryRef("ns/tiny", "v1")) == (raw.manifest, False)
    assert registry.remove(RegistryRef("copy", "v1")) == (again.manifest, True)
    assert not registry.has_blob(raw.manifest.hex)
    with pytest.raises(ModelNotFound):
        registry.manifest(RegistryRef("copy", "v1"))


def test_cli_push_pull_cache_rm_round_trip(tmp_path, tiny, capsys, monkeypatch):
    """The CLI subcommands over a directory registry, with no server running."""
    from handlers import cli

    monkeypatch.setenv("STRATO_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("STRATO_TIERS", f"disk:{tmp_path / 'tier'}:1GiB")
    monkeypatch.setenv("STRATO_PORT", "9")          # nothing listens: local report

    def run(*argv: str) -> str:
        code = cli.main(list(argv))
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    assert "uploaded" in run("push", str(tiny), "tiny:v1")
    assert "from remote" in run("pull", "tiny:v1")
    digest = blake3.blake3(tiny.read_bytes()).hexdigest()
    assert (tmp_path / "tier" / "blobs" / f"{digest}.gguf").read_bytes() == tiny.read_bytes()
    report = json.loads(run("cache", "--json"))
    (tier,) = report["tiers"]
    assert [e["model"] for e in tier["entries"]] == ["tiny:v1"]
    assert "tiny:v1" in run("cache") and "tiny:v1" in run("list")
    assert "removed tiny:v1" in run("rm", "tiny:v1")
    assert json.loads(run("cache", "--json"))["tiers"][0]["entries"] == []
    assert cli.main(["rm", "tiny:v1"]) == 1
    assert "not in any local tier" in capsys.readouterr().err
    assert cli.main(["pull", "nope:v1"]) == 1
    assert "strato push" in capsys.readouterr().err


@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_inspect_reads_only_the_header_of_a_registry_model(tmp_path, tiny, compress):
    from core.config import Settings
    from core.serving.cache_ops import read_header
    from tiers.gguf_header import read_header_file

    registry = Registry(str(tmp_path / "reg"), chunk_size=CHUNK)
    registry.push(str(tiny), parse_name_tag("tiny:v1"), compress=compress)
    header, size = read_header("tiny:v1", Settings(registry=registry.root))
    local = read_header_file(str(tiny))
    assert size == tiny.stat().st_size
    assert (header.architecture, header.block_count, header.data_offset, header.tensors) == \
        (local.architecture, local.block_count, local.data_offset, local.tensors)


def test_signed_push_verifies_and_a_tampered_manifest_is_refused(registry, tiny, tmp_path,
                                                                  capsys):
    from core.catalog import signing
    from core.catalog.manifest import InvalidManifest
    from handlers import cli

    private, public = signing.generate_key()
    key_file = tmp_path / "key"
    key_file.write_text(private)
    assert cli.main(["push", str(tiny), "tiny:signed", "--registry", registry.root,
                     "--sign-key", str(key_file)]) == 0, capsys.readouterr().err
    m = registry.manifest(RegistryRef("tiny", "signed"))
    assert m.signature is not None and m.signature.public_key == public
    assert signing.verify(m, trusted=[public])
    _, other = signing.generate_key()
    with pytest.raises(InvalidManifest, match="untrusted"):
        signing.verify(m, trusted=[other])
    # Change one field after signing: every read refuses it.
    path = os.path.join(registry.root, "manifests/tiny/signed.json")
    doc = json.loads(open(path).read())
    doc["tag"] = "other"
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(InvalidManifest, match="does not verify"):
        registry.manifest(RegistryRef("tiny", "signed"))
    unsigned = registry.push(str(tiny), parse_name_tag("tiny:plain")).manifest
    assert not signing.verify(unsigned)


def test_variants_are_listed_largest_first_pinned_by_digest_and_refused_when_wrong(
        registry, tmp_path, capsys):
    from core.catalog import signing
    from core.errors import BadRequest
    from handlers import cli

    files = {}
    for layers in (8, 4, 2):
        files[layers] = tmp_path / f"m{layers}.gguf"
        write_tiny_gguf(files[layers], n_layers=layers)
    private, _ = signing.generate_key()
    key_file = tmp_path / "key"
    key_file.write_text(private)
    assert cli.main(["push", str(files[8]), "m:big", "--registry", registry.root,
                     "--sign-key", str(key_file)]) == 0
    base = RegistryRef("m", "big")
    two = registry.push(str(files[2]), parse_name_tag("m:l2")).manifest
    # The base is signed: rewriting its manifest without the key would break it.
    with pytest.raises(BadRequest, match="signed"):
        registry.add_variant(base, two)
    registry.add_variant(base, two, sign_key=private)
    # The CLI pushes and lists in one step, and signs the rewritten base again.
    assert cli.main(["push", str(files[4]), "m:l4", "--variant-of", "m:big", "--registry",
                     registry.root, "--sign-key", str(key_file)]) == 0
    assert "m:big variants: l4" in capsys.readouterr().out
    m = registry.manifest(base)                       # reads, validates, verifies
    assert signing.verify(m)
    four = registry.manifest(RegistryRef("m", "l4"))
    assert [(v.tag, v.size, v.digest) for v in m.variants] == \
        [("l4", four.size, four.digest), ("l2", two.size, two.digest)]
    # A variant must be the same name and fewer bytes.
    other = registry.push(str(files[2]), parse_name_tag("n:l2")).manifest
    with pytest.raises(BadRequest, match="same name"):
        registry.add_variant(base, other)
    with pytest.raises(BadRequest, match="not smaller"):
        registry.add_variant(RegistryRef("m", "l2"), four)
    assert registry.manifest(base) == m               # refusals wrote nothing


def test_a_corrupt_manifest_is_a_5xx_for_the_request_that_names_it(tmp_path, tiny):
    import asyncio

    from core.config import Settings
    from core.serving.manager import ModelManager

    registry = Registry(str(tmp_path / "reg"), chunk_size=CHUNK)
    registry.push(str(tiny), parse_name_tag("tiny:v1"))
    path = os.path.join(registry.root, "manifests/tiny/v1.json")
    open(path, "w").write(open(path).read().replace('"size"', '"sise"'))

    async def main():
        manager = ModelManager(Settings(registry=registry.root,
                                        tiers=f"ram:64MiB,disk:{tmp_path / 'd'}:64MiB"))
        try:
            with pytest.raises(Exception) as info:
                await manager.engine("tiny:v1")
            return info.value
        finally:
            await manager.close()

    assert status_of(asyncio.run(main()))[0] == 502


def test_trusted_keys_refuse_unsigned_and_foreign_manifests(tmp_path, tiny):
    from core.catalog import signing
    from core.catalog.resolver import Resolver
    from core.config import from_env
    from core.errors import InvalidManifest

    private, public = signing.generate_key()
    _, other = signing.generate_key()
    open_registry = Registry(str(tmp_path / "reg"), chunk_size=CHUNK)
    signed = open_registry.push(str(tiny), parse_name_tag("tiny:signed"),
                                sign_key=private).manifest
    open_registry.push(str(tiny), parse_name_tag("tiny:plain"))
    # Without trusted keys both are served (only a broken signature is refused).
    assert open_registry.manifest(RegistryRef("tiny", "plain"))
    settings = from_env({"STRATO_REGISTRY": open_registry.root,
                         "STRATO_TRUSTED_KEYS": f" {public} ,"})
    strict = Resolver(settings).registry
    assert strict.trusted_keys == (public,)
    assert strict.manifest(RegistryRef("tiny", "signed")) == signed
    with pytest.raises(InvalidManifest, match="not signed") as info:
        strict.manifest(RegistryRef("tiny", "plain"))
    assert status_of(info.value)[0] == 502
    # By digest: the signed manifest of those bytes is found, the unsigned one skipped.
    assert strict.by_digest(DigestRef("tiny", signed.hex)) == signed
    foreign = Registry(open_registry.root, chunk_size=CHUNK, trusted_keys=(other,))
    with pytest.raises(InvalidManifest, match="untrusted"):
        foreign.manifest(RegistryRef("tiny", "signed"))
    with pytest.raises(InvalidManifest):
        foreign.by_digest(DigestRef("tiny", signed.hex))
    # A bare blob has no manifest to carry a signature: refused once keys are set.
    open_registry.remove(RegistryRef("tiny", "plain"))
    open_registry.remove(RegistryRef("tiny", "signed"))     # the blob goes with it
    blob = os.path.join(open_registry.root, signed.blob_key)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    with open(blob, "wb") as f:
        f.write(tiny.read_bytes())
    with pytest.raises(InvalidManifest, match="STRATO_TRUSTED_KEYS"):
        Resolver(settings).resolve(DigestRef("tiny", signed.hex))


def test_a_bad_signing_key_is_a_usage_error(tmp_path, tiny, capsys):
    from core.catalog import signing
    from handlers import cli

    key = tmp_path / "key"
    key.write_text("not a key")
    assert cli.main(["push", str(tiny), "tiny:x", "--registry", str(tmp_path / "r"),
                     "--sign-key", str(key)]) == 1
    assert "not an Ed25519 private key" in capsys.readouterr().err
    with pytest.raises(Exception) as info:
        signing.sign(Registry(str(tmp_path / "r2")).push(
            str(tiny), parse_name_tag("tiny:y")).manifest, "bad")
    assert status_of(info.value)[0] == 400


def test_pull_of_a_plain_url_revalidates_size_and_etag(tmp_path, http_root, capsys,
                                                       monkeypatch):
    """`strato pull URL` again after the object changed fetches the new bytes (it used
    to keep the stale copy silently)."""
    from handlers import cli

    monkeypatch.setenv("STRATO_TIERS", f"disk:{tmp_path / 'tier'}:1GiB")
    monkeypatch.setenv("STRATO_PORT", "9")
    served = http_root.directory / "m.gguf"
    url = f"{http_root.url}/m.gguf"

    def pull() -> str:
        assert cli.main(["pull", url]) == 0
        return capsys.readouterr().out

    write_tiny_gguf(served, n_layers=2)
    first = blake3.blake3(served.read_bytes()).hexdigest()
    assert first in pull()
    assert first in pull()                      # unchanged: the cached copy, same digest
    write_tiny_gguf(served, n_layers=3)         # the object changes (size and ETag)
    second = blake3.blake3(served.read_bytes()).hexdigest()
    assert second != first and second in pull()
