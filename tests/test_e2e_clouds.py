"""End to end on every store, each a real server on 127.0.0.1: S3 (moto_server), GCS
(gcp-storage-emulator), Azure Blob (Azurite) and plain HTTP with Range support.

For each: `strato push` the real Gemma into a registry on the store, `strato pull` it into
a disk tier (verified, bytes equal to the original), then a fresh server with empty
tiers answers a chat completion through the official `openai` client: a cold start
through manifest, layer-ordered verified fetch, RAM tier and llama.cpp."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import openai
import pytest

from core.config import Settings
from core.serving.manager import ModelManager
from handlers import cli
from tests.http_server import API_KEY, Server
from tests.services import HttpRoot

MODEL = "gemma3:270m"


def _settings(registry: str, tiers: str, allowed: tuple[str, ...] = ()) -> Settings:
    return Settings(registry=registry, tiers=tiers, ctx=512, parallel=2, threads=2,
                    max_queue=4, api_key=API_KEY, load_timeout=300,
                    allowed_sources=allowed)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _cli(capsys, *argv: str) -> str:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _pull_and_check(capsys, registry: str, tmp_path: Path, gemma_path: Path) -> None:
    tier = tmp_path / "pulled"
    out = _cli(capsys, "pull", MODEL, "--registry", registry, "--tiers", f"disk:{tier}:1GiB")
    assert MODEL in out and "from remote" in out
    blobs = list((tier / "blobs").glob("*.gguf"))
    assert len(blobs) == 1 and _sha256(blobs[0]) == _sha256(gemma_path)
    again = _cli(capsys, "pull", MODEL, "--registry", registry, "--tiers",
                 f"disk:{tier}:1GiB")
    assert f"from disk:{tier}" in again          # second pull: a tier hit, no download


def _chat_from_cold_cache(registry: str, tmp_path: Path, model: str = MODEL,
                          allowed: tuple[str, ...] = ()) -> None:
    settings = _settings(registry, f"ram:1GiB,disk:{tmp_path / 'cold'}:1GiB", allowed)
    server = Server(settings, ModelManager(settings))
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0,
                               timeout=300)
        reply = client.chat.completions.create(
            model=model, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content
        assert reply.model == model
        cache = httpx.get(f"{server.url}/v1/cache",
                          headers={"Authorization": f"Bearer {API_KEY}"}).json()
        (loaded,) = cache["loaded"]
        assert loaded["source"] == "remote" and loaded["model"] == model
        listed = [m.id for m in client.models.list().data]
        assert model in listed
    finally:
        server.stop()


def _push(capsys, registry: str, gemma_path: Path, *extra: str) -> dict:
    out = _cli(capsys, "push", str(gemma_path), MODEL, "--registry", registry, *extra)
    assert "uploaded" in out
    listed = json.loads(_cli(capsys, "list", "--remote", "--json", "--registry", registry))
    assert [row["model"] for row in listed] == [MODEL]
    return listed[0]


@pytest.mark.parametrize("fixture, compress", [("s3_bucket", "none"), ("gcs_bucket", "none"),
                                               ("az_container", "zstd")])
def test_push_pull_and_cold_chat(fixture, compress, request, capsys, tmp_path, gemma_path):
    root = request.getfixturevalue(fixture)
    registry = f"{root}/registry"
    row = _push(capsys, registry, gemma_path, "--compress", compress)
    assert row["compression"] == compress
    _pull_and_check(capsys, registry, tmp_path, gemma_path)
    _chat_from_cold_cache(registry, tmp_path)
    # rm --remote deletes the manifest and, with no other tag on it, the blob.
    assert "and its blob" in _cli(capsys, "rm", "--remote", MODEL, "--registry", registry)
    assert json.loads(_cli(capsys, "list", "--remote", "--json", "--registry", registry)) == []


def test_http_registry_and_plain_object(http_root: HttpRoot, capsys, tmp_path, gemma_path):
    # An HTTP(S) registry is read-only: publish into the served directory, read by URL.
    local = http_root.directory / "registry"
    _cli(capsys, "push", str(gemma_path), MODEL, "--registry", str(local))
    registry = f"{http_root.url}/registry"
    _pull_and_check(capsys, registry, tmp_path, gemma_path)
    _chat_from_cold_cache(registry, tmp_path)
    # A plain GGUF URL (no manifest): hashed while it streams, then served.
    (http_root.directory / "gemma.gguf").symlink_to(gemma_path)
    # A caller names a URL only where STRATO_ALLOWED_SOURCES lists it; a loopback host
    # only when the entry names that host.
    _chat_from_cold_cache(registry, tmp_path / "plain", f"{http_root.url}/gemma.gguf",
                          allowed=(f"{http_root.url}/",))


def test_registry_from_the_environment_alone(monkeypatch, s3_bucket, capsys, tmp_path, gemma_path):
    """The registry can come from STRATO_REGISTRY alone (the flag's environment twin)."""
    monkeypatch.setenv("STRATO_REGISTRY", f"{s3_bucket}/reg")
    from tests.test_manifest import write_tiny_gguf

    tiny = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny)
    _cli(capsys, "push", str(tiny), "tiny:1")
    _cli(capsys, "push", str(tiny), "tiny:2")
    listed = json.loads(_cli(capsys, "list", "--remote", "--json"))
    assert [r["model"] for r in listed] == ["tiny:1", "tiny:2"]
    assert "blob kept" in _cli(capsys, "rm", "--remote", "tiny:1")
