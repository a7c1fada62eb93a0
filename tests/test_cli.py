"""The `strato` CLI as a user runs it: subprocesses, the real model, real sockets."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from handlers.cli import COMMANDS, build_parser, settings_from
from tests.polling import wait_until

# One client with a patient timeout: two shared cores make a 5 s default flaky.
http = httpx.Client(timeout=300)

ROOT = Path(__file__).resolve().parent.parent
_CACHE = tempfile.mkdtemp(prefix="strato-cli-")  # tiers of these tests, not the user's
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
SMALL = {"STRATO_CTX": "512", "STRATO_PARALLEL": "2", "STRATO_THREADS": "2",
         "STRATO_TIERS": f"ram:1GiB,disk:{_CACHE}:2GiB"}


def strato(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handlers.cli", *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **SMALL, **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_every_registered_subcommand() -> None:
    out = strato("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command.name in out.stdout


def test_flags_override_their_environment_twins() -> None:
    args = build_parser().parse_args(["serve", "m.gguf", "--port", "7000"])
    settings = settings_from(args, {"STRATO_PORT": "9999", "STRATO_HOST": "0.0.0.0",
                                    "STRATO_CTX": "256"})
    assert (settings.port, settings.host, settings.ctx, settings.model) == \
        (7000, "0.0.0.0", 256, "m.gguf")
    env_only = settings_from(build_parser().parse_args(["serve"]),
                             {"STRATO_MODEL": "x:1", "STRATO_THREADS": "3"})
    assert (env_only.model, env_only.threads, env_only.port) == ("x:1", 3, 8080)


def test_bad_settings_exit_2_with_one_line() -> None:
    out = strato("serve", "--port", "70000")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "port" in out.stderr
    for name, value in (("STRATO_CHUNK", "1.2.3k"), ("STRATO_MAX_BODY", "lots"),
                        ("STRATO_PORT", "eighty"), ("STRATO_TIERS", "ram:1.2.3k"),
                        ("STRATO_SHUTDOWN_GRACE", "soon")):
        out = strato("list", env={name: value})
        assert out.returncode == 2, (name, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0
        assert name.removeprefix("STRATO_") in out.stderr and "configuration" in out.stderr


def test_inspect_agrees_with_the_gguf_package(gemma_path: Path) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(gemma_path)
    arch = reader.fields["general.architecture"].contents()
    out = strato("inspect", str(gemma_path), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["architecture"] == arch
    assert summary["context_length"] == reader.fields[f"{arch}.context_length"].contents()
    assert summary["layers"] == reader.fields[f"{arch}.block_count"].contents()
    assert summary["tensors"] == len(reader.tensors)
    assert summary["quantization"] == "Q4_K_M"  # the package's own name for this file
    assert summary["chat_template"] == (reader.fields["tokenizer.chat_template"].contents()
                                        if "tokenizer.chat_template" in reader.fields
                                        else None)
    table = strato("inspect", str(gemma_path))
    assert table.returncode == 0 and f"architecture    {arch}" in table.stdout
    assert "chat template" in table.stdout


def test_inspect_missing_file_names_it() -> None:
    out = strato("inspect", "/nonexistent/model.gguf")
    assert out.returncode == 1
    assert "/nonexistent/model.gguf" in out.stderr and out.stderr.count("\n") == 1


def test_run_one_prompt(gemma_path: Path) -> None:
    first = strato("run", str(gemma_path), "Name a colour.", "--max-tokens", "6",
                   "--temperature", "0")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip()
    again = strato("run", str(gemma_path), "Name a colour.", "--max-tokens", "6",
                   "--temperature", "0")
    assert again.stdout == first.stdout  # greedy decoding is reproducible


def test_run_raw_sends_the_prompt_without_the_chat_template(gemma_path: Path,
                                                              engine) -> None:
    """--raw is a completion: the same text the engine gives for the bare prompt."""
    import asyncio

    from tests.test_manager import first_tokens

    out = strato("run", str(gemma_path), "The sky is", "--raw", "--max-tokens", "4",
                 "--temperature", "0")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == asyncio.run(first_tokens(engine)) + "\n"


def test_run_and_pull_print_the_phase_timings(gemma_path: Path, tmp_path: Path) -> None:
    from core.catalog.references import parse_name_tag
    from core.catalog.registry import Registry

    Registry(str(tmp_path / "registry")).push(str(gemma_path), parse_name_tag("g:1"))
    env = {"STRATO_REGISTRY": str(tmp_path / "registry"),
           "STRATO_TIERS": f"ram:1GiB,disk:{tmp_path / 'tier'}:2GiB"}
    out = strato("run", "g:1", "Hi", "--max-tokens", "1", "--temperature", "0",
                 "--timings", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()
    rows = {line.rsplit(None, 3)[0].strip(): line for line in out.stderr.splitlines()
            if len(line.rsplit(None, 3)) == 4}
    for phase in ("process start -> settings", "manifest", "tensor fetch (verified, "
                  "written)", "llama.cpp model + context", "first token"):
        assert phase in rows, out.stderr[-2000:]
    assert f"fetch: {gemma_path.stat().st_size / 1e6:.1f} MB" in out.stderr
    cpu = re.search(r"^process CPU to first token: ([\d.]+) s \(user ([\d.]+), system "
                    r"([\d.]+)\)$", out.stderr, re.M)
    assert cpu, out.stderr[-2000:]
    total, user, system = map(float, cpu.groups())
    assert total > 0 and abs(total - user - system) <= 0.002    # the process's own clock
    pulled = strato("pull", "g:1", "--tiers", f"disk:{tmp_path / 'pulled'}:2GiB", env=env)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert "fetch start -> header verified" in pulled.stdout
    assert f"fetch: {gemma_path.stat().st_size / 1e6:.1f} MB" in pulled.stdout


def test_run_interactive_chat_keeps_history(gemma_path: Path) -> None:
    out = strato("run", str(gemma_path), "--max-tokens", "5", "--temperature", "0",
                 stdin="Hello!\nAnd again?\n/bye\n")
    assert out.returncode == 0, out.stderr[-2000:]
    answers = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(answers) >= 2


def test_list_prints_a_table() -> None:
    out = strato("list")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0].split()[:2] == ["MODEL", "TIER"]


def _wait_ready(url: str, proc: subprocess.Popen[str]) -> None:
    def ready() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            return http.get(f"{url}/ready").status_code == 200
        except httpx.TransportError:
            return False

    assert wait_until(ready, 240), "server never became ready"


@pytest.fixture
def spawn() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **SMALL, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_serve_answers_openai_requests(gemma_path: Path, spawn: Any) -> None:
    port = free_port()
    proc = spawn([sys.executable, "-m", "handlers.cli", "serve", str(gemma_path),
                  "--port", str(port)], {})
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, proc)
    r = http.post(f"{url}/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_uvicorn_module_app_reads_the_environment(gemma_path: Path, spawn: Any) -> None:
    port = free_port()
    proc = spawn([sys.executable, "-m", "uvicorn", "handlers.http:app", "--port", str(port)],
                 {"STRATO_MODEL": str(gemma_path), "STRATO_API_KEY": "k"})
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, proc)
    assert http.get(f"{url}/v1/models").status_code == 401
    models = http.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}).json()
    assert models["data"][0]["context_length"] == 512


def test_subcommand_table_is_extensible() -> None:
    """Another module adds a subcommand by appending one Command (as push/pull do)."""
    from handlers.cli import Command

    ran: list[argparse.Namespace] = []
    extra = Command("hello", "say hello", lambda p: p.add_argument("who"),
                    lambda args, settings: ran.append(args) or 0)
    COMMANDS.append(extra)
    try:
        args = build_parser().parse_args(["hello", "world"])
        assert args.func(args, settings_from(args, {})) == 0
        assert ran[0].who == "world"
    finally:
        COMMANDS.remove(extra)
