"""The only module that knows clouds: one fsspec filesystem per URL scheme.

Everything else in strato speaks URLs (s3://, gs://, az://, https://, file://, plain
paths) and calls the functions here. SDKs are imported lazily so importing a handler
stays cheap on Lambda. Credentials and endpoints come from each SDK's own standard
variables (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST, AZURE_STORAGE_CONNECTION_STRING /
AZURE_STORAGE_ACCOUNT_NAME), never from strato's, so emulators and clouds look alike.

Failures are translated once, here: missing objects -> ObjectNotFound, network errors
and 5xx -> TransientError (the loader retries), denied access -> SourceUnavailable.
"""

from __future__ import annotations

import asyncio
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from tiers.errors import (
    AddressRefused,
    ObjectNotFound,
    SourceUnavailable,
    StorageError,
    TransientError,
)
from tiers.timing import boottime, mark, span

SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "http", "https", "file")

_lock = threading.Lock()
_cache: dict[tuple[Any, ...], Any] = {}
# HTTP URLs a caller named: every connection made for them must reach a public address
# unless its host is one the operator listed (value). See restrict_to_public.
_public_only: dict[str, frozenset[str]] = {}


@dataclass(frozen=True)
class RemoteInfo:
    size: int
    etag: str | None      # changes when the object changes; None if the store has none


def scheme_of(url: str) -> str:
    """'s3://b/k' -> 's3'; a plain path -> 'file'."""
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def _env_key(*names: str) -> tuple[str | None, ...]:
    return tuple(os.environ.get(n) for n in names)


def _make(scheme: str) -> Any:
    if scheme == "s3":
        with span("import s3fs"):
            import s3fs

        # botocore reads AWS_ENDPOINT_URL itself; s3fs must not cache listings across
        # writers (manifests are mutable).
        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    if scheme in ("gs", "gcs"):
        import gcsfs

        token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
        return gcsfs.GCSFileSystem(skip_instance_cache=True, token=token)
    if scheme in ("az", "abfs"):
        import adlfs

        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            return adlfs.AzureBlobFileSystem(connection_string=conn, skip_instance_cache=True)
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        if not account:
            raise SourceUnavailable("az:// needs AZURE_STORAGE_CONNECTION_STRING or "
                                    "AZURE_STORAGE_ACCOUNT_NAME")
        return adlfs.AzureBlobFileSystem(account_name=account, anon=False,
                                         skip_instance_cache=True)
    if scheme in ("http", "https"):
        from fsspec.implementations.http import HTTPFileSystem

        return HTTPFileSystem(skip_instance_cache=True)
    if scheme == "file":
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()
    raise SourceUnavailable(f"unsupported URL scheme {scheme!r} (known: {', '.join(SCHEMES)})")


_ENV_OF = {
    "s3": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE",
           "AWS_DEFAULT_REGION", "AWS_REGION"),
    "gs": ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"),
    "az": ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"),
}


def restrict_to_public(url: str, private_hosts: frozenset[str] = frozenset()) -> None:
    """From now on, every connection made for `url` (the first and each redirect's,
    after DNS) must reach a globally routable address, except for hosts in
    `private_hosts` (the ones the operator listed). core.catalog.resolver calls it for
    each HTTP URL a request names; the operator's own URLs are not restricted."""
    with _lock:
        _public_only[url] = private_hosts


def _public_only_http(private_hosts: frozenset[str]) -> Any:
    """An HTTP filesystem whose aiohttp connector checks the addresses it connects to.

    The check sits in the connector's host resolution, which aiohttp runs for every
    connection (redirects included) and whose answer is the list of addresses it then
    connects to: a DNS name that resolves (or re-resolves) to 169.254.169.254, ::1 or
    ::ffff:10.0.0.1 is refused before a socket is opened.
    """
    import aiohttp
    from fsspec.implementations.http import HTTPFileSystem

    from tiers.addresses import is_public_ip

    class PublicOnlyConnector(aiohttp.TCPConnector):
        async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
            hosts = await super()._resolve_host(host, port, traces=traces)
            if host.lower().rstrip(".") not in private_hosts:
                for entry in hosts:
                    if not is_public_ip(entry["host"]):
                        raise AddressRefused(
                            f"{host} resolves to {entry['host']}, a local, link-local or "
                            "private address; list the host in STRATO_ALLOWED_SOURCES "
                            "to allow it")
            return hosts

    async def get_client(**kwargs: Any) -> Any:
        return aiohttp.ClientSession(connector=PublicOnlyConnector(), **kwargs)

    return HTTPFileSystem(skip_instance_cache=True, get_client=get_client)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a URL.

    Instances are cached per scheme and per the SDK variables that configure it, so a
    changed endpoint (tests, a new profile) gets a fresh client while chunk reads reuse
    one connection pool. HTTP URLs a caller named get a client that refuses private
    addresses (restrict_to_public).
    """
    scheme = scheme_of(url)
    family = {"gcs": "gs", "abfs": "az", "https": "http"}.get(scheme, scheme)
    key: tuple[Any, ...] = (family, _env_key(*_ENV_OF.get(family, ())))
    with _lock:
        private_hosts = _public_only.get(url) if family == "http" else None
        if private_hosts is not None:
            key = ("http-public", private_hosts)
        fs = _cache.get(key)
        if fs is None:
            fs = _cache[key] = (_make(scheme) if private_hosts is None
                                else _public_only_http(private_hosts))
    if family == "http":
        return fs, url
    if family == "file":
        return fs, urlsplit(url).path if url.startswith("file://") else os.path.abspath(url)
    return fs, url.split("://", 1)[1]


def forget_clients() -> None:
    """Drop every cached client: the next read builds new ones, with new connections and
    freshly resolved credentials. For a process restored from a snapshot (Lambda
    SnapStart), whose sockets and temporary credentials did not survive the snapshot."""
    with _lock:
        _cache.clear()


def _is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    name = type(exc).__name__
    return name in ("ResourceNotFoundError", "NoSuchKey", "NotFound")


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Turn SDK exceptions into strato's storage errors (one place, every call)."""
    try:
        yield
    except StorageError:
        raise
    except BaseException as exc:  # re-raised typed below
        if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise
        refused = _cause(exc, AddressRefused)
        if refused is not None:   # fsspec turns it into FileNotFoundError on the way
            raise refused from exc
        if _is_not_found(exc):
            raise ObjectNotFound(f"no such object: {url}") from exc
        if isinstance(exc, PermissionError) or _status_of(exc) in (401, 403):
            raise SourceUnavailable(f"access denied to {url}: {exc}") from exc
        if _status_of(exc) == 404:
            raise ObjectNotFound(f"no such object: {url}") from exc
        if isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError, ConnectionError)) \
                or _is_network(exc):
            raise TransientError(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise


def _cause(exc: BaseException, kind: type[StorageError]) -> StorageError | None:
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _is_network(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("aiohttp", "botocore", "aiobotocore", "azure", "google",
                              "urllib3", "requests"))


def info(url: str) -> RemoteInfo:
    """Size and version tag of one object (one HEAD-like call)."""
    if scheme_of(url) == "s3":
        bucket, key = _s3_split(url)
        reader = _s3_reader()
        if reader is not None:
            found = reader.head(bucket, key)
            return RemoteInfo(found.size, found.etag)
        with translated(url):
            head = _s3_client().head_object(Bucket=bucket, Key=key)
        etag = head.get("ETag")
        return RemoteInfo(int(head["ContentLength"]),
                          str(etag).strip('"') if etag is not None else None)
    fs, path = filesystem(url)
    with translated(url):
        data = fs.info(path)
    if data.get("type") == "directory":
        raise ObjectNotFound(f"{url} is a directory, not an object")
    size = data.get("size")
    if size is None:
        raise SourceUnavailable(f"{url}: the server does not report a size")
    etag = data.get("ETag") or data.get("etag") or data.get("md5Hash") or data.get("mtime")
    return RemoteInfo(int(size), str(etag).strip('"') if etag is not None else None)


def read_range(url: str, start: int, end: int, into: memoryview | None = None
               ) -> bytes | bytearray | memoryview:
    """Bytes [start, end) of an object; fewer at end of object (the caller checks).

    With `into` (writable, at least `end - start` bytes) the bytes land there and the
    filled part of it is returned: straight from the socket with the SDK-free S3 reader,
    copied once from the client's buffer otherwise.

    S3 reads (ranges, `read_bytes`, `info`: everything a load does) go through
    botocore's own threaded client rather than s3fs's event loop: the loader reads
    from many threads at once, and s3fs funnels every byte through one asyncio thread
    and aiohttp. Measured on the benchmark's S3 stand-in (2 cores, 16 streams, 2.4 GB):
    1.0-1.2 GB/s and 1.1-1.3 CPU s with botocore, 0.5-0.6 GB/s and 2.1-2.3 CPU s with
    s3fs; and a cold load no longer imports s3fs, aiobotocore and aiohttp at all.
    When the environment holds the whole S3 configuration (Lambda's case) the reads
    skip botocore too: tiers/s3_reader.py (see `_s3_reader`).
    Writes and listings (push, `list --remote`, rm) stay on s3fs.
    """
    if scheme_of(url) == "s3":
        return _s3_get(url, (start, end), into)
    fs, path = filesystem(url)
    with translated(url):
        data = fs.cat_file(path, start=start, end=end)
    return placed(data, into, url)


def placed(data: bytes | bytearray, into: memoryview | None, where: str
           ) -> bytes | bytearray | memoryview:
    """`data` itself, or copied into the front of `into` (the part it fills); more
    bytes than `into` holds is a SourceUnavailable (the store ignored the Range)."""
    if into is None:
        return data
    if len(data) > len(into):
        raise SourceUnavailable.range_ignored(where, len(data), len(into))
    into[:len(data)] = data
    return into[:len(data)]


_S3_READER_ENV = (*_ENV_OF["s3"], "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "AWS_CONFIG_FILE", "AWS_CA_BUNDLE", "AWS_USE_FIPS_ENDPOINT",
                  "AWS_USE_DUALSTACK_ENDPOINT")


def _s3_reader() -> Any:
    """The SDK-free S3 reader (tiers/s3_reader.py) when the environment holds the whole
    configuration, else None (botocore reads: `_s3_client`).

    Importing botocore and creating its client cost 0.3 s and more on a cold start,
    before the manifest GET; Lambda hands a function its credentials and region in the
    environment, where a signature and http.client do the same reads without either.
    Cached per configuration like the other clients; `forget_clients` drops it (and so
    its connections)."""
    key = ("s3-reader", _env_key(*_S3_READER_ENV))
    with _lock:
        if key not in _cache:
            start = boottime()
            from tiers import s3_reader

            reader = _cache[key] = s3_reader.from_environment()
            if reader is not None:           # else botocore's set-up is the phase
                mark("s3 client", start)
        return _cache[key]


def _s3_client() -> Any:
    """One botocore S3 client per configuration (thread-safe; a connection per stream)."""
    key = ("s3-botocore", _env_key(*_ENV_OF["s3"]))
    with _lock:
        client = _cache.get(key)
        if client is None:
            with span("s3 client"):
                with span("import botocore"):
                    import botocore.config
                    import botocore.session

                client = _cache[key] = botocore.session.get_session().create_client(
                    "s3", config=botocore.config.Config(max_pool_connections=64,
                                                        retries={"max_attempts": 1}))
    return client


def _s3_split(url: str) -> tuple[str, str]:
    bucket, _, key = url.split("://", 1)[1].partition("/")
    return bucket, key


def _s3_get(url: str, span: tuple[int, int] | None, into: memoryview | None = None
            ) -> bytes | bytearray | memoryview:
    """The object, or bytes [start, end) of it (into `into`: see `read_range`), through
    the SDK-free reader or the botocore client."""
    bucket, key = _s3_split(url)
    reader = _s3_reader()
    if reader is not None:
        return reader.get(bucket, key, span, into)
    extra = {}
    if span is not None:
        if span[1] <= span[0]:
            return b""
        extra["Range"] = f"bytes={span[0]}-{span[1] - 1}"
    with translated(url):
        try:
            response = _s3_client().get_object(Bucket=bucket, Key=key, **extra)
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "InvalidRange":
                return b""                   # starts at or past the end: nothing there
            raise
        body = response["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return placed(data, into, url)


def read_bytes(url: str) -> bytes:
    """A whole small object (a manifest)."""
    if scheme_of(url) == "s3":
        return bytes(_s3_get(url, None))
    fs, path = filesystem(url)
    with translated(url):
        return fs.cat_file(path)


def write_bytes(url: str, data: bytes) -> None:
    """Write a small object in one request (manifests: the last write of a push)."""
    fs, path = filesystem(url)
    with translated(url):
        if scheme_of(url) == "file":
            _local_atomic_write(path, data)
        else:
            fs.pipe_file(path, data)


def _local_atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    with translated(url):
        return bool(fs.exists(path))


def ls(url: str) -> list[str]:
    """URLs of the entries directly under `url` (empty when there are none)."""
    fs, path = filesystem(url)
    prefix = url.split("://", 1)[0] + "://" if "://" in url else ""
    with translated(url):
        try:
            names = fs.ls(path, detail=False)
        except ObjectNotFound:
            return []
        except FileNotFoundError:
            return []
    names = [n.rstrip("/") for n in names]     # HTTP indexes mark folders with a slash
    if scheme_of(url) == "file":
        return [f"file://{n}" if url.startswith("file://") else n for n in names]
    if scheme_of(url) in ("http", "https"):
        return names
    return [prefix + n for n in names]


def rm(url: str) -> None:
    fs, path = filesystem(url)
    with translated(url):
        fs.rm(path)


def put_file(local: str, url: str, *, concurrency: int = 8, part_size: int = 16 << 20,
             on_progress: Callable[[int], None] | None = None) -> None:
    """Upload a local file, in parallel parts where the store supports it.

    S3 uses multipart with `concurrency` parts in flight, Azure block blobs the same;
    GCS uploads parts as temporary objects in parallel and composes them (at most 32).
    Local targets are written to a partial and renamed, so readers never see half a blob.
    """
    scheme = scheme_of(url)
    fs, path = filesystem(url)
    size = os.path.getsize(local)
    with translated(url):
        if scheme == "file":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.{os.getpid()}.partial"
            fs.put_file(local, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        elif scheme == "s3":
            fs.put_file(local, path, chunksize=max(part_size, 5 << 20),
                        max_concurrency=concurrency)
        elif scheme in ("az", "abfs"):
            fs.put_file(local, path, overwrite=True, max_concurrency=concurrency)
        elif scheme in ("gs", "gcs") and size > part_size:
            _gcs_composite(fs, local, path, size, part_size, concurrency)
        else:
            fs.put_file(local, path)
    if on_progress is not None:
        on_progress(size)


def _gcs_composite(fs: Any, local: str, path: str, size: int, part_size: int,
                   concurrency: int) -> None:
    """Parallel composite upload: parts as temporary objects, one compose, clean-up.

    GCS has no multipart API; compose is its equivalent (32 sources per call), and the
    composed object appears atomically, so readers never see half a blob.
    """
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    part_size = max(part_size, -(-size // 32))
    token = uuid.uuid4().hex[:12]
    parts = [(i, off, min(part_size, size - off))
             for i, off in enumerate(range(0, size, part_size))]
    names = [f"{path}.parts-{token}/{i:02d}" for i, _, _ in parts]

    def upload(part: tuple[int, int, int]) -> None:
        i, offset, length = part
        with open(local, "rb") as f:
            f.seek(offset)
            fs.pipe_file(names[i], f.read(length))

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(upload, parts))
        fs.merge(path, names)
    finally:
        try:
            fs.rm(names)
        except Exception:  # stray parts cost storage, never correctness
            pass
