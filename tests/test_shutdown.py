"""SIGTERM drains a real `strato serve`: the stream in flight finishes, new requests and
/ready get 503 with Retry-After, the tier copy is committed, the policy history is
saved, and the process exits 0. Every step waits on an event (the first SSE chunk, a
status, the process's exit), never on a sleep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.catalog.references import parse_name_tag
from core.catalog.registry import Registry
from tests.http_server import wait_until
from tests.services import free_port

COUNTING = "Count from 1 to 500, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8,"


def strato_script() -> str:
    script = Path(sys.executable).parent / "strato"
    assert script.exists(), f"the console script is installed with the package: {script}"
    return str(script)


@pytest.fixture
def serve(tmp_path: Path, gemma_path: Path):
    registry = Registry(str(tmp_path / "registry"))
    digest = registry.push(str(gemma_path), parse_name_tag("gemma3:270m")).manifest.digest
    port = free_port()
    disk = tmp_path / "disk"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "STRATO_REGISTRY": registry.root,
           "STRATO_MODEL": "gemma3:270m", "STRATO_TIERS": f"ram:1GiB,disk:{disk}:2GiB",
           "STRATO_CTX": "512", "STRATO_PARALLEL": "2", "STRATO_THREADS": "2",
           "STRATO_SHUTDOWN_GRACE": "120", "STRATO_LOG_LEVEL": "INFO"}
    env.pop("STRATO_API_KEY", None)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([strato_script(), "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{port}", disk, digest.split(":", 1)[1], \
            tmp_path / "serve.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_sigterm_mid_stream_finishes_the_stream_and_exits_0(serve) -> None:
    proc, url, disk, hex_digest, log = serve
    client = httpx.Client(base_url=url, timeout=300)
    assert wait_until(lambda: _status(client, "/ready") == 200, 600), log.read_text()
    body = {"prompt": COUNTING, "max_tokens": 48, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        proc.send_signal(signal.SIGTERM)
        # Draining: not ready, new work refused with Retry-After, still alive.
        assert wait_until(lambda: _status(client, "/ready") == 503, 60), log.read_text()
        refused = client.post("/v1/completions", json={**body, "stream": False})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "shutting_down"
        assert client.get("/health").status_code == 200
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]", rest[-3:]
    chunks = [json.loads(line[6:]) for line in [first] + rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert proc.wait(timeout=300) == 0, log.read_text()
    # The disk copy written behind RAM was finished, not abandoned; history was saved.
    assert (disk / "blobs" / f"{hex_digest}.gguf").is_file(), sorted(disk.rglob("*"))
    assert not list(disk.rglob("*.partial"))
    assert (disk / "policy.json").is_file()


def _status(client: httpx.Client, path: str) -> int:
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return 0
