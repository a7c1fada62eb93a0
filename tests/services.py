"""Fixtures that start real services on 127.0.0.1 (free ports) and stop them.

Servers are session-scoped (startup is slow); each test gets its own bucket/container
and the SDK variables pointing at the server (monkeypatched, so they vanish after):

- `s3_bucket`     moto_server (the S3 API over HTTP)      -> "s3://<bucket>"
- `gcs_bucket`    gcp-storage-emulator (in memory)        -> "gs://<bucket>"
- `az_container`  Azurite blob (in memory)                -> "az://<container>"
- `http_root`     a threaded HTTP server with Range support over a tmp dir
- `fault_proxy`   a TCP proxy that cuts connections after N bytes (fault tests)

`store` is parametrized over all four stores for tests that must pass on each.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    if not wait_until(listening, timeout):
        raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def _start(cmd: list[str], port: int, what: str, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_port(port, proc, what)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- S3 (moto_server) -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server."""
    port = free_port()
    proc = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port,
                  "moto_server")
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


def s3_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point boto3/s3fs at `endpoint` through their standard variables only."""
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def s3_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on moto; the environment points the SDKs at it."""
    import boto3

    s3_env(monkeypatch, moto_server)
    bucket = _name("strato")
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


# -- GCS (gcp-storage-emulator) -----------------------------------------------------------

@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """STORAGE_EMULATOR_HOST value of an in-memory GCS emulator."""
    port = free_port()
    proc = _start([str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1",
                   "--port", str(port), "--in-memory", "-q"], port, "gcp-storage-emulator")
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture
def gcs_bucket(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from tiers import remote

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    bucket = _name("strato")
    fs, _ = remote.filesystem(f"gs://{bucket}")
    fs.mkdir(bucket)
    return f"gs://{bucket}"


# -- Azure Blob (Azurite) ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Connection string of an in-memory Azurite blob service."""
    if not AZURITE.exists():
        pytest.skip("Azurite is not installed (run `make test`, which runs npm ci)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    proc = _start([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                   "--inMemoryPersistence",
                   "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"],
                  port, "azurite-blob", cwd=workdir)
    yield (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
           f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    _stop(proc)


@pytest.fixture
def az_container(azurite: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    container = _name("strato")
    BlobServiceClient.from_connection_string(azurite).create_container(container)
    return f"az://{container}"


# -- HTTP with Range -----------------------------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single-range `Range: bytes=a-b` support (206), as S3 and CDNs do."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[override]
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            return super().send_head()         # an HTML index, as fsspec's ls expects
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        size = path.stat().st_size
        start, end = 0, size - 1
        match = _RANGE.match(self.headers.get("Range", ""))
        f = open(path, "rb")
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            if start >= size:
                f.close()
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", f'"{path.stat().st_mtime_ns:x}-{size:x}"')
        self.end_headers()
        f.seek(start)
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        remaining = getattr(self, "_remaining", None)
        while remaining is None or remaining > 0:
            block = source.read(min(1 << 16, remaining or 1 << 16))
            if not block:
                break
            outputfile.write(block)
            if remaining is not None:
                remaining -= len(block)


@dataclass
class HttpRoot:
    directory: Path
    url: str            # base URL, no trailing slash


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[HttpRoot]:
    """Serve a fresh directory over HTTP with Range support."""
    directory = tmp_path / "www"
    directory.mkdir()

    def handler(*args: object, **kwargs: object) -> RangeHandler:
        return RangeHandler(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield HttpRoot(directory, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


# -- TCP fault proxy -------------------------------------------------------------------------------

class FaultProxy:
    """Forwards 127.0.0.1:port to a target; in the first `faulty` connections (all when
    None) it either cuts the stream after `cut_after` bytes sent to the client, or, with
    `flip=True`, flips the bit pattern of the byte at that position and carries on."""

    def __init__(self, target_port: int, cut_after: int, faulty: int | None = None,
                 flip: bool = False) -> None:
        self.target_port, self.cut_after, self.faulty = target_port, cut_after, faulty
        self.flip = flip
        self.connections = 0
        self.faults = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                faulty = self.faulty is None or self.connections <= self.faulty
            threading.Thread(target=self._serve, args=(client, faulty), daemon=True).start()

    def _serve(self, client: socket.socket, faulty: bool) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
        self._pipe(upstream, client, self.cut_after if faulty else None)

    def _pipe(self, src: socket.socket, dst: socket.socket, fault_at: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if fault_at is not None and sent <= fault_at < sent + len(data):
                    with self._lock:
                        self.faults += 1
                    if not self.flip:
                        dst.sendall(data[:fault_at - sent])
                        break
                    i = fault_at - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()


@pytest.fixture
def fault_proxy() -> Iterator:
    """Factory: fault_proxy(target_port, cut_after=N, faulty=K, flip=False) -> FaultProxy."""
    proxies: list[FaultProxy] = []

    def make(target_port: int, cut_after: int, faulty: int | None = None,
             flip: bool = False) -> FaultProxy:
        proxies.append(FaultProxy(target_port, cut_after, faulty, flip))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


# -- every store at once -------------------------------------------------------------------------

@dataclass
class Store:
    """One object store under test: where objects live and how a test puts them there."""

    kind: str
    root: str                         # "s3://bucket", "gs://b", "az://c", "http://h:p"
    directory: Path | None = None     # http only: the served directory

    def put(self, key: str, data: bytes) -> str:
        """Store `data` at `key` (through the store's own API) and return its URL."""
        if self.directory is not None:
            path = self.directory / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            from tiers import remote

            remote.write_bytes(f"{self.root}/{key}", data)
        return f"{self.root}/{key}"


@pytest.fixture(params=["s3", "gs", "az", "http"])
def store(request: pytest.FixtureRequest) -> Store:
    """Each object store in turn, started for real on 127.0.0.1."""
    name = {"s3": "s3_bucket", "gs": "gcs_bucket", "az": "az_container",
            "http": "http_root"}[request.param]
    value = request.getfixturevalue(name)
    if isinstance(value, HttpRoot):
        return Store("http", value.url, value.directory)
    return Store(request.param, value)
