"""tiers/remote.py against each real store: S3 (moto), GCS (emulator), Azure (Azurite), HTTP."""

from __future__ import annotations

import os

import pytest

from tests.services import Store
from tiers import remote
from tiers.errors import ObjectNotFound, SourceUnavailable

DATA = os.urandom(300_000)


def test_ranged_reads_and_info(store: Store) -> None:
    url = store.put("models/blob.bin", DATA)
    info = remote.info(url)
    assert info.size == len(DATA)
    assert remote.read_range(url, 0, 10) == DATA[:10]
    assert remote.read_range(url, 123_456, 200_000) == DATA[123_456:200_000]
    # past the end a ranged read is short, not an error: the loader checks lengths
    assert remote.read_range(url, len(DATA) - 5, len(DATA) + 100) == DATA[-5:]
    assert remote.read_bytes(url) == DATA


def test_unknown_object_is_object_not_found(store: Store) -> None:
    store.put("present.bin", b"x")
    missing = f"{store.root}/absent/nothing.gguf"
    with pytest.raises(ObjectNotFound):
        remote.info(missing)
    with pytest.raises(ObjectNotFound):
        remote.read_range(missing, 0, 10)


@pytest.mark.parametrize("kind", ["s3", "gs", "az", "file"])
def test_put_exists_ls_rm(kind: str, request: pytest.FixtureRequest, tmp_path) -> None:
    root = {"s3": lambda: request.getfixturevalue("s3_bucket"),
            "gs": lambda: request.getfixturevalue("gcs_bucket"),
            "az": lambda: request.getfixturevalue("az_container"),
            "file": lambda: f"file://{tmp_path}/registry"}[kind]()
    local = tmp_path / "upload.bin"
    big = os.urandom(12 << 20)           # > one 5 MiB part: S3 multipart, Azure blocks
    local.write_bytes(big)
    url = f"{root}/blobs/blake3/abc"
    remote.put_file(str(local), url, concurrency=4, part_size=5 << 20)
    assert remote.exists(url)
    assert remote.ls(f"{root}/blobs/blake3") == [url]      # no stray parts left behind
    assert remote.info(url).size == len(big)
    assert remote.read_range(url, (5 << 20) - 3, (5 << 20) + 3) == big[(5 << 20) - 3:(5 << 20) + 3]
    assert remote.read_bytes(url) == big
    remote.write_bytes(f"{root}/manifests/m/latest.json", b'{"a": 1}')
    names = remote.ls(f"{root}/manifests/m")
    assert names == [f"{root}/manifests/m/latest.json"]
    assert remote.read_bytes(names[0]) == b'{"a": 1}'
    remote.rm(url)
    assert not remote.exists(url)
    assert remote.ls(f"{root}/nothing-here") == []


def test_plain_paths_and_file_urls(tmp_path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(DATA)
    assert remote.read_range(str(path), 5, 9) == DATA[5:9]
    assert remote.read_range(f"file://{path}", 5, 9) == DATA[5:9]
    assert remote.info(f"file://{path}").size == len(DATA)
    with pytest.raises(ObjectNotFound):
        remote.info(str(tmp_path / "missing.gguf"))


def test_refused_connection_is_retryable_not_found_is_not(monkeypatch) -> None:
    from tests.services import free_port
    from tiers.errors import TransientError

    url = f"http://127.0.0.1:{free_port()}/m.gguf"    # nothing listens there
    with pytest.raises(TransientError):
        remote.read_range(url, 0, 10)


def test_unknown_scheme() -> None:
    with pytest.raises(SourceUnavailable):
        remote.filesystem("ftp://host/m.gguf")


def test_http_listing_of_a_served_directory(http_root) -> None:
    (http_root.directory / "reg" / "manifests" / "m").mkdir(parents=True)
    (http_root.directory / "reg" / "manifests" / "m" / "latest.json").write_text("{}")
    base = f"{http_root.url}/reg/manifests"
    assert remote.ls(f"{base}/m") == [f"{base}/m/latest.json"]
    assert remote.ls(base) == [f"{base}/m"]
