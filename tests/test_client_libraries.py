"""Client libraries people point at an OpenAI-compatible URL, used as their docs use them,
against a real strato server (tests/http_server.py) on the real Gemma model.

They cannot share .venv (instructor pins jiter<0.15, .venv's openai needs >=0.16), so
each runs as a subprocess in .venv-clients, which `make test` builds from
requirements/clients.txt; the scripts in tests/clients/ assert and exit non-zero on
any failure. Skipped only where that venv is absent (a bare `pytest` outside make).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.http_server import API_KEY, Server, server  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-clients" / "bin" / "python"
SCRIPTS = Path(__file__).parent / "clients"

pytestmark = pytest.mark.skipif(not PYTHON.exists(),
                                reason=".venv-clients is absent: run `make clients`")


@pytest.fixture(scope="module")
def target(server: Server) -> tuple[str, str]:  # noqa: F811 (the shared server fixture)
    """The server's /v1 URL and its model id."""
    import httpx

    model = httpx.get(f"{server.url}/v1/models", timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"][0]["id"]
    return f"{server.url}/v1", model


def run(script: str, target: tuple[str, str], *extra: str) -> str:
    url, model = target
    with tempfile.TemporaryDirectory() as home:  # whatever a library caches stays here
        proc = subprocess.run([str(PYTHON), str(SCRIPTS / script), url, API_KEY, model,
                               *extra], capture_output=True, text=True, timeout=600,
                              env={"PATH": "/usr/bin:/bin", "HOME": home})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_instructor_json_schema_and_tools_modes(target: tuple[str, str]) -> None:
    out = run("instructor_modes.py", target)
    assert "JSON_SCHEMA {" in out and "TOOLS {" in out


def test_langchain_structured_output_and_bind_tools(target: tuple[str, str]) -> None:
    out = run("langchain_tools.py", target)
    assert "json_schema {" in out and "function_calling {" in out and "bind_tools {" in out


def test_agents_sdk_calls_its_function_tool(target: tuple[str, str]) -> None:
    assert run("agents_sdk.py", target).startswith("chat 21 C in ")


def test_agents_sdk_over_the_responses_api(target: tuple[str, str]) -> None:
    assert run("agents_sdk.py", target, "responses").startswith("responses 21 C in ")
