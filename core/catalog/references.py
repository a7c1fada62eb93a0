"""Model references: the one place that decides what a user's `model` string means.

A reference arrives from a request body, `STRATO_MODEL` or the CLI, and later becomes an
object key, a file path or a URL. Everything is decided here, as pure string work,
before any I/O: a refused reference never touches a disk or a socket. The operator's
settings name anything (`parse`); a caller is held to `parse_request`'s rules.

| form                                 | parsed as          |
| ------------------------------------ | ------------------ |
| `name`, `name:tag`                   | `RegistryRef`      |
| `name@blake3:<hex>`                  | `DigestRef`        |
| `s3://`, `gs://`, `az://`, `http(s)://` | `ObjectRef`     |
| `/abs/path`, `./rel`, `x.gguf`, `file:///abs` | `FileRef` |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Union
from urllib.parse import unquote, urlsplit

from core.errors import InvalidReference
from tiers.addresses import is_public_host

DEFAULT_TAG = "latest"
MAX_LENGTH = 2048
OBJECT_SCHEMES = ("s3", "gs", "az", "http", "https")

# Registry names: slash-separated segments (namespaces, like ollama's `library/x`), each
# starting with an alphanumeric so no segment can be `.`, `..` or a hidden file.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME_RE = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT}){{0,7}}$")
# Docker's tag rule: the tag becomes `<tag>.json`, so it may never contain a slash.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class RegistryRef:
    """`name:tag`: a manifest at `<registry>/manifests/<name>/<tag>.json`."""

    name: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def manifest_key(self) -> str:
        return f"manifests/{self.name}/{self.tag}.json"


@dataclass(frozen=True)
class DigestRef:
    """`name@blake3:<hex>`: exactly these bytes, whatever tag points at them now."""

    name: str
    hex: str

    def __str__(self) -> str:
        return f"{self.name}@blake3:{self.hex}"

    @property
    def digest(self) -> str:
        return f"blake3:{self.hex}"

    @property
    def blob_key(self) -> str:
        return f"blobs/blake3/{self.hex}"


@dataclass(frozen=True)
class ObjectRef:
    """One GGUF object in a store, with no manifest: hashed while it streams."""

    url: str
    scheme: str

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The object's file name without `.gguf`: what /v1/models shows by default."""
        return _stem(urlsplit(self.url).path)


@dataclass(frozen=True)
class FileRef:
    """A local GGUF file, always held as an absolute, normalised path."""

    path: str

    def __str__(self) -> str:
        return self.path

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    @property
    def name(self) -> str:
        return _stem(self.path)


Reference = Union[RegistryRef, DigestRef, ObjectRef, FileRef]


def parse(text: str) -> Reference:
    """Parse `text` into a reference, or raise InvalidReference naming the reason.

    No allow-list here: this is how the operator's own settings (STRATO_MODEL, the CLI)
    are read. A caller's `model` goes through `parse_request`.
    """
    if not isinstance(text, str):
        raise InvalidReference("model reference must be a string", param="model")
    _check_characters(text)
    return _parse_form(text.strip())


@dataclass(frozen=True)
class RequestPolicy:
    """What a caller may name (STRATO_ALLOWED_SOURCES and the configured default).

    `allowed_sources` entries are schemes (`s3`, `https://`) or URL prefixes
    (`s3://bucket/models/`, `file:///models`, `http://10.0.0.5:9000/`); empty allows no
    URL and no path. `default_key` is the canonical form of STRATO_MODEL: naming the
    default is always allowed, whatever it is.
    """

    allowed_sources: tuple[str, ...] = ()
    default_key: str | None = None

    def private_hosts(self) -> frozenset[str]:
        """Hosts an entry names explicitly: the only ones whose link-local, loopback or
        private addresses a caller's URL may reach (checked again at connect time)."""
        hosts = set()
        for entry in self.allowed_sources:
            host = urlsplit(entry.strip()).hostname if "://" in entry else None
            if host:
                hosts.add(host.lower())
        return frozenset(hosts)


def parse_request(text: str, policy: RequestPolicy) -> Reference:
    """A caller's `model`: registry references (their root is the operator's
    STRATO_REGISTRY), the configured default, and URLs or paths only where
    `policy.allowed_sources` lists them.

    Everything is decided from the string, before any I/O, and a refusal says the same
    thing whether or not a named path exists (no file-existence oracle). An HTTP URL
    whose host is a literal link-local, loopback or private address (`localhost`,
    `127.1`, `[::ffff:169.254.169.254]`, ...) is refused unless an entry names that host;
    names that resolve to such addresses are refused at connect time by tiers/remote.py.
    """
    ref = parse(text)
    if isinstance(ref, (RegistryRef, DigestRef)) or str(ref) == policy.default_key:
        return ref
    check_allowed(ref.url, policy.allowed_sources)
    if isinstance(ref, ObjectRef) and ref.scheme in ("http", "https"):
        host = (urlsplit(ref.url).hostname or "").lower()
        if host not in policy.private_hosts() and not is_public_host(host):
            raise InvalidReference(
                f"model source {ref.url!r} names a local, link-local or private address; "
                "list its host in STRATO_ALLOWED_SOURCES to allow it", param="model")
    return ref


def parse_name_tag(text: str) -> RegistryRef:
    """Parse only the `name[:tag]` form: what `strato push FILE NAME:TAG` accepts."""
    _check_characters(text)
    ref = _parse_form(text.strip())
    if not isinstance(ref, RegistryRef):
        raise InvalidReference(f"expected NAME:TAG, got {text!r}", param="model")
    return ref


def check_allowed(url: str, allowed_sources: tuple[str, ...]) -> None:
    """Refuse a URL whose scheme or prefix is outside the allow-list (empty = none).

    Prefixes match on path boundaries, so `s3://models` does not admit `s3://models-evil`.
    """
    for entry in allowed_sources:
        if _matches(url, entry.strip()):
            return
    listed = ", ".join(allowed_sources) if allowed_sources else "empty: no URL or path"
    raise InvalidReference(
        f"model source {url!r} is not allowed (STRATO_ALLOWED_SOURCES: {listed}); "
        "requests may name registry models (name:tag) and the default model",
        param="model")


def _matches(url: str, entry: str) -> bool:
    if not entry:
        return False
    if entry.startswith("/"):
        entry = f"file://{entry}"
    scheme_only = entry.removesuffix("://").removesuffix(":")
    if _is_scheme(scheme_only) and ("://" not in entry or entry.endswith("://")):
        return url.lower().startswith(scheme_only.lower() + "://")
    if entry.endswith("/"):
        return url.startswith(entry)
    return url == entry or url.startswith(entry + "/")


def _is_scheme(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", text) is not None


def _check_characters(text: str) -> None:
    if "\x00" in text:
        raise InvalidReference("model reference contains a NUL byte", param="model")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidReference("model reference contains a control character", param="model")
    if not text.strip():
        raise InvalidReference("model reference is empty", param="model")
    if len(text) > MAX_LENGTH:
        raise InvalidReference(f"model reference longer than {MAX_LENGTH} characters",
                               param="model")


def _parse_form(text: str) -> Reference:
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match:
        scheme = scheme_match.group(1).lower()
        if scheme == "file":
            return _file_url(text)
        if scheme in OBJECT_SCHEMES:
            return _object(text, scheme)
        raise InvalidReference(
            f"unsupported scheme {scheme!r} in {text!r} (supported: "
            f"{', '.join(OBJECT_SCHEMES + ('file',))})", param="model")
    if _looks_like_path(text):
        return _file_path(text)
    if "@" in text:
        return _digest(text)
    return _registry(text)


def _looks_like_path(text: str) -> bool:
    return (text.startswith(("/", "./", "~/")) or text in (".", "~")
            or text.lower().endswith(".gguf"))


def _check_segments(path: str, what: str) -> None:
    """Refuse `..` in any spelling (raw or percent-encoded) before it reaches a store."""
    for candidate in (path, unquote(path)):
        if "\x00" in candidate:
            raise InvalidReference(f"{what} contains a NUL byte", param="model")
        if any(seg == ".." for seg in re.split(r"[/\\]", candidate)):
            raise InvalidReference(f"{what} contains '..' (path traversal)", param="model")


def _registry(text: str) -> RegistryRef:
    if ".." in text:
        raise InvalidReference(f"model name {text!r} contains '..' (path traversal)",
                               param="model")
    name, sep, tag = text.rpartition(":")
    if not sep:
        name, tag = text, DEFAULT_TAG
    if not _NAME_RE.match(name):
        raise InvalidReference(
            f"invalid model name {name!r}: use letters, digits, '.', '_', '-' and '/' "
            "between namespace segments, as in gemma3:270m", param="model")
    if not _TAG_RE.match(tag):
        raise InvalidReference(f"invalid tag {tag!r} in {text!r}", param="model")
    return RegistryRef(name, tag)


def _digest(text: str) -> DigestRef:
    name_part, _, digest = text.partition("@")
    algo, sep, hexpart = digest.partition(":")
    if not sep or algo.lower() != "blake3":
        raise InvalidReference(f"unsupported digest {digest!r}: use name@blake3:<hex>",
                               param="model")
    hexpart = hexpart.lower()
    if not _HEX_RE.match(hexpart):
        raise InvalidReference(f"digest must be 64 hex characters, got {hexpart!r}",
                               param="model")
    # A tag before the digest (`name:tag@blake3:...`) is accepted and ignored: the digest
    # is exact, the tag only documents where it came from.
    return DigestRef(_registry(name_part).name, hexpart)


def _object(text: str, scheme: str) -> ObjectRef:
    parts = urlsplit(text)
    if not parts.netloc:
        raise InvalidReference(f"{text!r} names no bucket or host", param="model")
    if scheme in ("s3", "gs", "az") and parts.path.strip("/") == "":
        raise InvalidReference(f"{text!r} names a bucket but no object key", param="model")
    if scheme in ("s3", "gs", "az") and (parts.query or parts.fragment):
        raise InvalidReference(f"{text!r}: object URLs take no query or fragment",
                               param="model")
    _check_segments(parts.path, f"model URL {text!r}")
    # Normalise only the scheme's case: keys are case-sensitive in every store.
    return ObjectRef(f"{scheme}://{text.split('://', 1)[1]}", scheme)


def _file_url(text: str) -> FileRef:
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise InvalidReference(f"{text!r}: file URLs must be local (file:///path)",
                               param="model")
    return _file_path(unquote(parts.path), original=text)


def _file_path(path: str, original: str | None = None) -> FileRef:
    _check_segments(path, f"model path {original or path!r}")
    expanded = os.path.expanduser(path)
    if not expanded:
        raise InvalidReference("model path is empty", param="model")
    return FileRef(os.path.normpath(os.path.abspath(expanded)))


def _stem(path: str) -> str:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base[: -len(".gguf")] if base.lower().endswith(".gguf") else base
