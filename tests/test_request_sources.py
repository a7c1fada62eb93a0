"""Closed by default: what a caller may name in `model`, through the real HTTP server.

A caller may name registry references and the configured default; URLs and paths only
where STRATO_ALLOWED_SOURCES lists them; never a local, link-local or private address
unless its host is listed, checked on the literal before any I/O and on the address
actually connected to (after DNS, on every redirect).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest

from core.config import Settings
from tests.http_server import API_KEY, Server, running_server, settings_for
from tests.services import RangeHandler
from tests.tiny_gguf import write_tiny_gguf
from tiers import remote
from tiers.addresses import is_public_ip
from tiers.errors import AddressRefused

AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Origin:
    """An HTTP server that counts the requests each path gets; `/go` redirects to
    `redirect_to`. The counts prove a refused URL was never fetched."""

    def __init__(self, directory: Path) -> None:
        self.hits: dict[str, int] = {}
        self.redirect_to = ""
        origin = self

        class Handler(RangeHandler):
            def send_head(self):  # type: ignore[override]
                origin.hits[self.path] = origin.hits.get(self.path, 0) + 1
                if self.path == "/go":
                    self.send_response(HTTPStatus.FOUND)
                    self.send_header("Location", origin.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return super().send_head()

        def handler(*args: Any, **kwargs: Any) -> Handler:
            return Handler(*args, directory=str(directory), **kwargs)

        self.server = ThreadingHTTPServer(("0.0.0.0", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    directory = tmp_path_factory.mktemp("origin")
    write_tiny_gguf(directory / "tiny.gguf")
    # What the fetch controls fetch: bytes that are no GGUF, so the load stops at the
    # header (a 503) and never hands llama.cpp anything.
    (directory / "junk.gguf").write_bytes(b"not a model " * 4096)
    o = Origin(directory)
    yield o
    o.close()


def without_model(tmp_path: Path, **overrides: Any) -> Settings:
    """A server with no default model (an empty registry): nothing loads at start."""
    registry = tmp_path / "registry"
    registry.mkdir(exist_ok=True)
    return dataclasses.replace(settings_for("unused"), model=None,
                               registry=str(registry), **overrides)


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The defaults: STRATO_ALLOWED_SOURCES empty."""
    with running_server(without_model(tmp_path_factory.mktemp("closed"))) as server:
        yield server


def ask(server: Server, model: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", headers=AUTH, timeout=120,
                      json={"model": model, "prompt": "hi", "max_tokens": 1})


def refused(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_model_reference" and error["param"] == "model"
    return error


@pytest.mark.parametrize("model", [
    "file:///etc/shadow", "/etc/hostname", "/nonexistent/x.gguf", "./model.gguf",
    "http://169.254.169.254/latest/meta-data", "https://example.com/m.gguf",
    "s3://bucket/m.gguf", "gs://bucket/m.gguf", "az://container/m.gguf",
])
def test_a_caller_names_no_url_or_path_by_default(closed: Server, model: str) -> None:
    error = refused(ask(closed, model))
    assert "not allowed" in error["message"]


def test_no_file_existence_oracle(closed: Server, tmp_path: Path) -> None:
    there = tmp_path / "there.gguf"
    write_tiny_gguf(there)
    answers = [ask(closed, str(path)) for path in (there, tmp_path / "absent.gguf")]
    bodies = [refused(a) for a in answers]
    assert bodies[0]["message"].replace("there", "X") == \
        bodies[1]["message"].replace("absent", "X")


def test_the_load_route_follows_the_same_rules(closed: Server) -> None:
    for ref in ("file:///etc/shadow", "http://169.254.169.254/latest/meta-data"):
        response = httpx.post(f"{closed.url}/v1/models/{quote(ref, safe='')}/load",
                              headers=AUTH)
        refused(response)
    # A registry reference is the caller's to name: accepted (it fails later, as 404).
    accepted = httpx.post(f"{closed.url}/v1/models/nobody:1/load", headers=AUTH)
    assert accepted.status_code == 202
    assert ask(closed, "nobody:1").status_code == 404


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Server]:
    """Every http(s) URL allowed by scheme, and the origin's 127.0.0.1 listed by host:
    the only private address this server may reach."""
    with running_server(without_model(tmp_path_factory.mktemp("listed"), allowed_sources=(
            "http", "https", f"http://127.0.0.1:{origin.port}/"))) as server:
        yield server


@pytest.mark.parametrize("host", [
    "127.0.0.2", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "localhost",
    "[::1]", "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]", "169.254.169.254",
    "10.1.2.3", "192.168.0.1", "[fe80::1]", "[fd00::1]", "0.0.0.0", "[::]",
    "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::1]", "[::127.0.0.1]",
])
def test_private_literals_are_refused_even_when_the_scheme_is_listed(
        listed: Server, origin: Origin, host: str) -> None:
    before = dict(origin.hits)
    error = refused(ask(listed, f"http://{host}:{origin.port}/tiny.gguf"))
    assert "private address" in error["message"]
    assert origin.hits == before     # refused before any I/O


def private_name() -> str:
    """A DNS name (not a literal) that resolves to a non-public address: this machine's
    own host name, through /etc/hosts (127.0.x.1 or a container's private address)."""
    name = socket.gethostname()
    addresses = {a[4][0] for a in socket.getaddrinfo(name, None)}
    assert addresses and not any(is_public_ip(a) for a in addresses), addresses
    return name


def test_a_name_that_resolves_to_a_private_address_is_refused_at_connect_time(
        listed: Server, origin: Origin) -> None:
    before = origin.hits.get("/tiny.gguf", 0)
    error = refused(ask(listed, f"http://{private_name()}:{origin.port}/tiny.gguf"))
    assert "resolves to" in error["message"]
    assert origin.hits.get("/tiny.gguf", 0) == before


@pytest.mark.parametrize("target", ["{name}", "127.0.0.2", "[::ffff:127.0.0.1]",
                                    "169.254.169.254"])
def test_a_redirect_to_a_private_address_is_refused(listed: Server, origin: Origin,
                                                    target: str) -> None:
    host = target.format(name=private_name())
    origin.redirect_to = f"http://{host}:{origin.port}/tiny.gguf"
    before = origin.hits.get("/tiny.gguf", 0)
    error = refused(ask(listed, f"http://127.0.0.1:{origin.port}/go"))
    assert "private address" in error["message"]
    assert origin.hits.get("/tiny.gguf", 0) == before


def test_a_listed_private_host_is_fetched(listed: Server, origin: Origin) -> None:
    """The control for the refusals above: the host the operator listed is reached."""
    before = origin.hits.get("/junk.gguf", 0)
    response = ask(listed, f"http://127.0.0.1:{origin.port}/junk.gguf")
    assert response.status_code == 503, response.text   # fetched, and not a GGUF
    assert origin.hits.get("/junk.gguf", 0) > before


def test_the_operator_default_is_not_limited(tmp_path: Path, origin: Origin) -> None:
    """STRATO_MODEL may be any URL, a private one included, and a caller may name it."""
    url = f"http://127.0.0.1:{origin.port}/junk.gguf?default"
    settings = dataclasses.replace(settings_for(url), tiers="ram:64MiB")
    before = origin.hits.get("/junk.gguf?default", 0)
    with running_server(settings) as server:
        response = ask(server, url)
        assert response.status_code == 503, response.text   # fetched, and not a GGUF
        assert origin.hits.get("/junk.gguf?default", 0) > before


def test_restricted_urls_check_the_connected_address_in_the_remote(origin: Origin) -> None:
    """tiers.remote on its own: the same URL is readable until it is restricted."""
    url = f"http://{private_name()}:{origin.port}/tiny.gguf?restricted"
    assert remote.info(url).size > 0
    remote.restrict_to_public(url)
    with pytest.raises(AddressRefused):
        remote.info(url)
    with pytest.raises(AddressRefused):
        remote.read_range(url, 0, 10)
    remote.restrict_to_public(url, frozenset({private_name().lower()}))
    assert remote.read_range(url, 0, 4) == b"GGUF"
