"""core/serving/cache_ops.py, what `strato pull`, `rm` and `inspect` do, against real
tiers, a real registry directory and a real HTTP server with Range support."""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard

from core.catalog.references import parse_name_tag
from core.catalog.registry import Registry
from core.config import Settings
from core.errors import BadRequest, ModelNotFound
from core.serving.cache_ops import pull, read_header, remove_local
from tests.tiny_gguf import write_tiny_gguf
from tiers.gguf_header import read_header_file

CHUNK = 4096


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf", blocks=3)


def settings(tmp_path: Path, **fields: object) -> Settings:
    fields.setdefault("tiers", f"ram:64MiB,disk:{tmp_path}/disk:64MiB")
    return Settings(registry=str(tmp_path / "registry"), chunk=CHUNK, **fields)


def same_header(a: object, b: object) -> bool:
    keys = ("architecture", "block_count", "data_offset", "tensors", "chat_template")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def test_header_of_a_file_an_http_object_and_a_zstd_registry_blob(tmp_path: Path, model: Path,
                                                                  http_root) -> None:
    local = read_header_file(str(model))
    size = model.stat().st_size
    header, n = read_header(str(model), settings(tmp_path))
    assert same_header(header, local) and n == size
    (http_root.directory / "tiny.gguf").write_bytes(model.read_bytes())
    header, n = read_header(f"{http_root.url}/tiny.gguf", settings(tmp_path))
    assert same_header(header, local) and n == size
    registry = Registry(str(tmp_path / "registry"), chunk_size=CHUNK)
    pushed = registry.push(str(model), parse_name_tag("tiny:z"), compress="zstd").manifest
    assert pushed.compression == "zstd" and len(pushed.chunks) > 2
    header, n = read_header("tiny:z", settings(tmp_path))
    assert same_header(header, local) and n == size
    # The reader decompresses frames: the stored object itself is not a GGUF.
    stored = (tmp_path / "registry" / pushed.blob_key).read_bytes()
    assert stored[:4] != b"GGUF" and zstandard.ZstdDecompressor().decompressobj().decompress(
        stored[:pushed.frame_offsets[1]])[:4] == b"GGUF"


def test_a_missing_file_is_a_404_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="absent.gguf") as info:
        read_header(str(tmp_path / "absent.gguf"), settings(tmp_path))
    assert info.value.status == 404


def test_pull_fills_the_disk_tier_and_rm_empties_it(tmp_path: Path, model: Path,
                                                   http_root) -> None:
    (http_root.directory / "tiny.gguf").write_bytes(model.read_bytes())
    url = f"{http_root.url}/tiny.gguf"
    s = settings(tmp_path)
    first = pull(s, url)
    assert first.source == "remote" and first.size == model.stat().st_size
    assert first.tiers == (f"disk:{tmp_path}/disk",)            # never the RAM tier
    assert (tmp_path / "disk" / "blobs" / f"{first.digest}.gguf").is_file()
    again = pull(s, url)
    assert again.digest == first.digest and again.source == f"disk:{tmp_path}/disk"
    assert pull(s, str(model)).source == "file"                  # a local file stays put
    assert remove_local(s, url) == [f"disk:{tmp_path}/disk"]     # found by its source URL
    with pytest.raises(ModelNotFound, match="not in any local tier"):
        remove_local(s, url)


def test_rm_by_registry_name_and_pull_without_a_disk_tier(tmp_path: Path, model: Path) -> None:
    Registry(str(tmp_path / "registry"), chunk_size=CHUNK).push(
        str(model), parse_name_tag("tiny:v1"))
    s = settings(tmp_path)
    assert pull(s, "tiny:v1").source == "remote"
    assert remove_local(s, "tiny:v1") == [f"disk:{tmp_path}/disk"]
    with pytest.raises(BadRequest, match="no disk tier"):
        pull(settings(tmp_path, tiers="ram:64MiB"), "tiny:v1")
