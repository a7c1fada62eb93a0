"""SnapStart as awslambdaric runs it: AWS_LAMBDA_INITIALIZATION_TYPE=snap-start makes the
client run the before-snapshot hooks after init, park on /runtime/restore/next (the
snapshot point), and run the after-restore hooks when that answers.

The model comes from an HTTP range server that counts what it serves. At the snapshot
point the server is shut down and the process is frozen and thawed (the snapshot and the
restore); the restored process must then answer from the RAM tier without the remote,
with Python's RNG reseeded, its metrics reset and its scheduler alive.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.counting_store import counting_store_fixture  # noqa: F401 - the fixture
from tests.lambda_runtime import Function, RuntimeApi, drain, lambda_env

ROOT = Path(__file__).resolve().parent.parent
CHAT = json.dumps({"messages": [{"role": "user", "content": "Name a colour."}],
                   "max_tokens": 4, "temperature": 1.0})


def http_event(path: str, body: str | None = None) -> dict[str, Any]:
    data = json.loads((ROOT / "events" / "http-v2-chat.json").read_text())
    data["rawPath"] = data["requestContext"]["http"]["path"] = path
    data["requestContext"]["http"]["method"] = "POST" if body is not None else "GET"
    data["body"] = base64.b64encode((body or "").encode()).decode()
    data["isBase64Encoded"] = True
    return data


def reply(function: Function, path: str, body: str | None = None) -> tuple[int, str]:
    got = function.invoke(http_event(path, body))
    assert got.ok, got.body
    payload = got.body
    text = payload["body"]
    if payload.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    return payload["statusCode"], text


def test_restored_process_serves_from_the_snapshot(gemma_path: Path, counting_store: Any
                                                   ) -> None:
    store = counting_store()
    (store.directory / "gemma.gguf").symlink_to(gemma_path)
    size = gemma_path.stat().st_size
    api = RuntimeApi()
    function = Function(api, lambda_env(api, "snap-start", extra={
        "STRATO_MODEL": f"{store.url}/gemma.gguf", "STRATO_CTX": "512",
        "STRATO_THREADS": "2", "STRATO_TIERS": "ram:1GiB"}))
    try:
        assert function.start().kind == "restore_next"       # init done, hooks ran
        snapshot = json.loads(function.wait_line('"snapshot"'))
        assert store.fetches_of(size) == 1.0
        store.close()                                          # the remote is gone
        function.freeze()                                      # snapshot ...
        function.thaw()                                        # ... and restore
        api.restore()
        restored = json.loads(function.wait_line('"restored"'))
        assert restored["rng"] != snapshot["rng"]
        assert restored["schedulers_alive"] >= 1

        status, text = reply(function, "/v1/chat/completions", CHAT)
        assert status == 200, text
        assert json.loads(text)["choices"][0]["message"]["content"]
        status, text = reply(function, "/v1/cache")
        loaded = json.loads(text)["loaded"]
        assert [(e["source"], e["tier"]) for e in loaded] == [("remote", "ram")]
        status, text = reply(function, "/metrics")
        # Reset at restore: the fetch and load belong to the snapshotted environment.
        assert "strato_load_seconds_count" not in text
        assert "strato_cold_starts_total 1.0" in text
        assert not any(e.kind.endswith("error") for e in drain(api))
    finally:
        function.kill()
        api.close()


def test_a_model_that_fails_to_load_fails_the_snapshot_init(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 60)
    api = RuntimeApi()
    function = Function(api, lambda_env(api, "snap-start", extra={
        "STRATO_MODEL": str(broken), "STRATO_TIERS": "ram:64MiB"}))
    try:
        end = function.start()
        assert end.kind == "init_error", end
        assert "unsupported GGUF version" in end.body["errorMessage"]
    finally:
        function.kill()
        api.close()


def test_stream_function_hook_routes(gemma_path: Path) -> None:
    """StreamFunction (Lambda Web Adapter + uvicorn) gets the same work through the
    adapter's SnapStart hook routes, POSTed in the order the adapter sends them."""
    import os
    import subprocess
    import sys

    import httpx

    from handlers.lambda_stream import AFTER, BEFORE
    from tests.services import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STRATO_"))}
    env.update(STRATO_MODEL=str(gemma_path), STRATO_CTX="512", STRATO_THREADS="2",
               STRATO_TIERS="ram:1GiB", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "handlers.lambda_stream:app",
                             "--port", str(port), "--no-access-log"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            _wait_ready(client, proc)           # the adapter's readiness check (/ready)
            before = client.post(BEFORE)
            assert before.status_code == 200, before.text
            assert before.json()["warmed"] == str(gemma_path)
            after = client.post(AFTER)
            assert after.status_code == 200, after.text
            assert after.json()["rng"] != before.json()["rng"]
            assert after.json()["schedulers_alive"] >= 1
            assert "strato_load_seconds_count" not in client.get("/metrics").text
            chat = client.post("/v1/chat/completions", json=json.loads(CHAT))
            assert chat.status_code == 200, chat.text
            assert client.get(BEFORE).status_code == 405
    finally:
        proc.kill()
        proc.wait()


def _wait_ready(client: Any, proc: Any) -> None:
    """Poll /ready as the adapter does, until 200; fail if the server exits."""
    import subprocess

    import httpx

    while proc.poll() is None:
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        try:
            proc.wait(timeout=0.2)      # wakes at once if the server dies
        except subprocess.TimeoutExpired:
            continue                    # still starting: ask again
    raise AssertionError(f"server exited with {proc.returncode}")
