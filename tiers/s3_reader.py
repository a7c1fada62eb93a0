"""S3 reads (HEAD, GET, ranged GET) with nothing but the standard library.

Why it exists: on a cold start the manifest GET and the header's ranged GETs are on the
critical path (the model build cannot start before they land), and botocore put about
0.3 s of imports plus the creation of its client in front of them. A read needs a
SigV4 signature and an HTTP request, which `hmac`, `hashlib` and `http.client` do in
a few milliseconds of start-up; importing this module imports no SDK.

When: only when the environment is the whole configuration, which is what Lambda
gives: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), no AWS_PROFILE,
no shared config file, no FIPS/dual-stack endpoint. Anything else (profiles, SSO,
instance metadata, no credentials) is botocore's job (`from_environment` returns None).

tiers/remote.py, the only module that knows clouds, owns it: this is its private helper.
Addressing follows botocore: a custom endpoint (AWS_ENDPOINT_URL_S3, else
AWS_ENDPOINT_URL) is addressed path-style; AWS's own endpoint
(https://s3.<region>.amazonaws.com) virtual-hosted where the bucket name allows it.
Errors come out as strato's: 404 -> ObjectNotFound, 401/403 -> SourceUnavailable,
5xx, 429, connection errors and short bodies -> TransientError (the loader retries).
A bucket in another region is asked again, once, in the region S3 names.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote, urlsplit

from tiers.errors import ObjectNotFound, SourceUnavailable, TransientError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT_S = 60.0                       # botocore's connect and read timeouts
# Bucket names that can be a DNS label under a TLS wildcard (no dots): botocore's rule
# for virtual-hosted addressing on https.
_VIRTUAL_HOSTABLE = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")
# Variables that ask for something only botocore does.
_BOTOCORE_ONLY = ("AWS_PROFILE", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class Head:
    size: int
    etag: str | None


def from_environment(env: Mapping[str, str] = os.environ) -> "S3Reader | None":
    """A reader configured from the environment alone, or None when the configuration
    is (or may be) elsewhere: no key pair in the environment, a named profile (botocore
    then ignores the environment's keys), a shared config file (it may name a region,
    an endpoint or an addressing style), FIPS or dual-stack endpoints."""
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        return None
    if any(env.get(name, "").strip().lower() not in ("", "false") for name in _BOTOCORE_ONLY):
        return None
    config = env.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config")
    if os.path.exists(config):
        return None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    return S3Reader(Credentials(access, secret, env.get("AWS_SESSION_TOKEN") or None),
                    region, endpoint, ca_bundle=env.get("AWS_CA_BUNDLE") or None)


def amz_date(now: float | None = None) -> str:
    """The SigV4 timestamp (UTC, second precision)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def sign(method: str, host: str, path: str, headers: dict[str, str],
         credentials: Credentials, region: str, timestamp: str) -> dict[str, str]:
    """`headers` plus what SigV4 for S3 adds (x-amz-date, x-amz-content-sha256 of the
    empty body, x-amz-security-token, Authorization), for a request without a query or
    body. `path` is already percent-encoded; S3 signs it as sent (no normalisation).
    Every header sent is signed, as botocore does (host included)."""
    signed = {k.lower(): v for k, v in headers.items()}
    signed["host"] = host
    signed["x-amz-date"] = timestamp
    signed["x-amz-content-sha256"] = EMPTY_SHA256
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical = "\n".join([
        method, path, "",
        "".join(f"{n}:{' '.join(signed[n].split())}\n" for n in names),
        ";".join(names), EMPTY_SHA256])
    scope = f"{timestamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", timestamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (timestamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {k: v for k, v in signed.items() if k != "host"}
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


class _WrongRegion(Exception):
    def __init__(self, region: str) -> None:
        super().__init__(region)
        self.region = region


class S3Reader:
    """HEAD and (ranged) GET of S3 objects, thread-safe: each thread keeps its own
    keep-alive connection per host (the loader reads from many threads at once)."""

    def __init__(self, credentials: Credentials, region: str, endpoint: str | None = None,
                 *, ca_bundle: str | None = None) -> None:
        self.credentials, self.region = credentials, region
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self._ca_bundle = ca_bundle
        self._tls: ssl.SSLContext | None = None
        self._regions: dict[str, str] = {}     # bucket -> region S3 said it lives in
        self._local = threading.local()

    # -- the calls --------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> Head:
        """Size and ETag (quotes stripped) of one object."""
        status, headers, _ = self._call("HEAD", bucket, key, {})
        etag = headers.get("etag")
        return Head(int(headers["content-length"]), etag.strip('"') if etag else None)

    def get(self, bucket: str, key: str, span: tuple[int, int] | None = None,
            into: memoryview | None = None) -> bytearray | memoryview:
        """The object, or bytes [start, end) of it (fewer at its end; none past it).

        With `into` (a writable buffer of at least the span's length) the body is read
        straight into it and the filled part of it is returned: a loader that reads into
        the memory the model will be served from copies each byte once."""
        extra = {}
        if span is not None:
            if span[1] <= span[0]:
                return bytearray()
            extra["Range"] = f"bytes={span[0]}-{span[1] - 1}"
        _, _, body = self._call("GET", bucket, key, extra, into)
        return body

    # -- one request --------------------------------------------------------------------

    def url(self, bucket: str, key: str, region: str | None = None) -> tuple[str, str, str]:
        """(scheme, host[:port], encoded path) for an object, botocore's addressing."""
        path = quote(key.encode(), safe="/~")
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            base = parts.path.rstrip("/")
            return parts.scheme, parts.netloc, f"{base}/{quote(bucket, safe='')}/{path}"
        host = f"s3.{region or self.region}.amazonaws.com"
        if _VIRTUAL_HOSTABLE.fullmatch(bucket):
            return "https", f"{bucket}.{host}", f"/{path}"
        return "https", host, f"/{quote(bucket, safe='')}/{path}"

    def _call(self, method: str, bucket: str, key: str, extra: dict[str, str],
              into: memoryview | None = None
              ) -> tuple[int, dict[str, str], bytearray | memoryview]:
        where = f"s3://{bucket}/{key}"
        region = self._regions.get(bucket, self.region)
        try:
            return self._once(method, bucket, key, extra, region, where, into)
        except _WrongRegion as moved:
            self._regions[bucket] = moved.region
            try:
                return self._once(method, bucket, key, extra, moved.region, where, into)
            except _WrongRegion as again:
                raise SourceUnavailable(f"{where}: S3 keeps redirecting (to region "
                                        f"{again.region})") from None

    def _once(self, method: str, bucket: str, key: str, extra: dict[str, str],
              region: str, where: str, into: memoryview | None
              ) -> tuple[int, dict[str, str], bytearray | memoryview]:
        scheme, host, path = self.url(bucket, key, region)
        headers = sign(method, host, path, extra, self.credentials, region, amz_date())
        for attempt in (0, 1):
            conn, reused = self._connection(scheme, host)
            try:
                conn.request(method, path, headers=headers)
                response = conn.getresponse()
                status = response.status
                got = {k.lower(): v for k, v in response.getheaders()}
                if status in (200, 206):
                    body: bytearray | memoryview
                    if method == "HEAD":
                        response.read()           # frees the connection for the next
                        body = bytearray()
                    else:
                        body = _read_body(response, where, into)
                    if response.will_close:
                        self._drop(scheme, host)
                    return status, got, body
                detail = response.read()
            except TransientError:                # a body cut short
                self._drop(scheme, host)
                raise
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as exc:
                self._drop(scheme, host)
                if reused and attempt == 0:       # the server closed an idle keep-alive
                    continue
                raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(scheme, host)
                raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc
            if response.will_close:
                self._drop(scheme, host)
            return self._failed(status, got, detail, region, where)
        raise AssertionError("unreachable")

    def _failed(self, status: int, headers: dict[str, str], detail: bytes, region: str,
                where: str) -> tuple[int, dict[str, str], bytearray | memoryview]:
        code_match = _ERROR_CODE.search(detail)
        code = code_match.group(1).decode(errors="replace") if code_match else str(status)
        moved = headers.get("x-amz-bucket-region")
        if status in (301, 307, 400) and moved and moved != region:
            raise _WrongRegion(moved)
        if status == 416:                  # starts at or past the end: nothing there
            return status, headers, bytearray()
        if status == 404:
            raise ObjectNotFound(f"no such object: {where}")
        if status in (401, 403):
            raise SourceUnavailable(f"access denied to {where}: {status} {code}")
        if status >= 500 or status in (408, 429):
            raise TransientError(f"{where}: {status} {code}")
        raise SourceUnavailable(f"{where}: S3 answered {status} {code}")

    # -- connections --------------------------------------------------------------------

    def _connection(self, scheme: str, host: str) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to `host`, and whether it served a request before."""
        pool: dict[tuple[str, str], http.client.HTTPConnection] | None = \
            getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        conn = pool.get((scheme, host))
        if conn is not None:
            return conn, True
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context(cafile=self._ca_bundle)
            conn = http.client.HTTPSConnection(host, timeout=TIMEOUT_S, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, timeout=TIMEOUT_S)
        pool[(scheme, host)] = conn
        return conn, False

    def _drop(self, scheme: str, host: str) -> None:
        pool = getattr(self._local, "pool", {})
        conn = pool.pop((scheme, host), None)
        if conn is not None:
            conn.close()


def _read_body(response: http.client.HTTPResponse, where: str,
               into: memoryview | None = None) -> bytearray | memoryview:
    """The whole body: into `into`, or into one preallocated buffer, when its length is
    announced (a ranged read is read once, straight into its final place); a short body
    is a TransientError (the connection was cut), a longer one than `into` holds a
    SourceUnavailable (the store ignored the Range)."""
    length = response.getheader("Content-Length")
    if length is None:
        if into is None:
            return bytearray(response.read())
        from tiers.remote import placed  # imported already: it is what calls this

        return placed(response.read(), into, where)  # type: ignore[return-value]
    size = int(length)
    if into is not None and size > len(into):
        response.close()
        raise SourceUnavailable.range_ignored(where, size, len(into))
    view = into[:size] if into is not None else memoryview(bytearray(size))
    got = 0
    while got < size:
        n = response.readinto(view[got:])
        if not n:
            raise TransientError(f"{where}: body cut short: got {got} of {size} bytes")
        got += n
    return view if into is not None else view.obj  # type: ignore[return-value]
