"""Model references: every form in DESIGN.md parses, everything else is refused with a
reason, and refusal happens before any I/O (the parser is pure: no file is touched)."""

from __future__ import annotations

import pytest

from core.catalog.references import (
    DigestRef,
    FileRef,
    ObjectRef,
    RegistryRef,
    RequestPolicy,
    parse,
    parse_name_tag,
    parse_request,
)
from core.errors import InvalidReference, status_of

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("text, expected", [
    ("gemma3", RegistryRef("gemma3", "latest")),
    ("gemma3:270m", RegistryRef("gemma3", "270m")),
    ("library/gemma3:270m-q4_K_M", RegistryRef("library/gemma3", "270m-q4_K_M")),
    ("  gemma3:270m  ", RegistryRef("gemma3", "270m")),
    (f"gemma3@blake3:{HEX}", DigestRef("gemma3", HEX)),
    (f"gemma3@BLAKE3:{HEX.upper()}", DigestRef("gemma3", HEX)),
    (f"gemma3:270m@blake3:{HEX}", DigestRef("gemma3", HEX)),
    ("s3://bucket/models/gemma.gguf", ObjectRef("s3://bucket/models/gemma.gguf", "s3")),
    ("gs://bucket/gemma.gguf", ObjectRef("gs://bucket/gemma.gguf", "gs")),
    ("az://container/dir/gemma.gguf", ObjectRef("az://container/dir/gemma.gguf", "az")),
    ("https://host/p/gemma.gguf", ObjectRef("https://host/p/gemma.gguf", "https")),
    ("http://127.0.0.1:8000/g.gguf", ObjectRef("http://127.0.0.1:8000/g.gguf", "http")),
    ("S3://Bucket/Key.gguf", ObjectRef("s3://Bucket/Key.gguf", "s3")),
    ("/models/gemma.gguf", FileRef("/models/gemma.gguf")),
    ("/models//sub/./gemma.gguf", FileRef("/models/sub/gemma.gguf")),
    ("file:///models/gemma.gguf", FileRef("/models/gemma.gguf")),
    ("file://localhost/models/a%20b.gguf", FileRef("/models/a b.gguf")),
])
def test_every_documented_form_parses(text, expected):
    assert parse(text) == expected


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse("./m.gguf") == FileRef(str(tmp_path / "m.gguf"))
    assert parse("sub/m.gguf") == FileRef(str(tmp_path / "sub" / "m.gguf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse("~/m.gguf") == FileRef(str(tmp_path / "m.gguf"))


def test_canonical_strings_round_trip():
    for text in ["gemma3:latest", "ns/gemma3:270m", f"gemma3@blake3:{HEX}",
                 "s3://b/k.gguf", "/m/x.gguf"]:
        assert str(parse(text)) == text
        assert parse(str(parse(text))) == parse(text)


def test_names_and_keys():
    assert parse("gemma3:270m").manifest_key == "manifests/gemma3/270m.json"
    assert parse(f"g@blake3:{HEX}").blob_key == f"blobs/blake3/{HEX}"
    assert parse("s3://b/dir/Gemma-3.gguf").name == "Gemma-3"
    assert parse("/x/y/model.GGUF").name == "model"
    assert parse("/x/y/model.gguf").url == "file:///x/y/model.gguf"


@pytest.mark.parametrize("text, reason", [
    ("../secrets:latest", "path traversal"),
    ("a/../../b:1", "path traversal"),
    ("gemma..3", "path traversal"),
    ("s3://bucket/../other/k.gguf", "path traversal"),
    ("s3://bucket/%2E%2E/k.gguf", "path traversal"),
    ("https://h/a/..%2f..%2fetc/passwd.gguf", "path traversal"),
    ("/models/../etc/passwd.gguf", "path traversal"),
    ("file:///models/%2e%2e/x.gguf", "path traversal"),
    ("gem\x00ma:1", "NUL"),
    ("s3://b/k%00.gguf", "NUL"),
    ("gemma\n:1", "control character"),
    ("", "empty"),
    ("   ", "empty"),
    ("x" * 3000, "longer than"),
    ("ftp://host/m.gguf", "unsupported scheme"),
    ("javascript://x/y", "unsupported scheme"),
    ("s3://bucket", "no object key"),
    ("gs://bucket/", "no object key"),
    ("s3:///key.gguf", "no bucket"),
    ("s3://b/k.gguf?versionId=1", "no query"),
    ("file://evil.example/x.gguf", "must be local"),
    ("gemma3@sha256:" + HEX, "unsupported digest"),
    ("gemma3@blake3:abc", "64 hex"),
    (":270m", "invalid model name"),
    ("Gemma 3:1b", "invalid model name"),
    ("gemma3:", "invalid tag"),
    ("gemma3:a/b", "invalid"),
    (".hidden:1", "invalid model name"),
])
def test_refused_with_reason(text, reason):
    with pytest.raises(InvalidReference) as info:
        parse(text)
    assert reason.lower() in info.value.message.lower()
    assert status_of(info.value)[:1] == (400,)
    assert info.value.code == "invalid_model_reference"


def test_no_io_happens_for_a_refused_or_accepted_path(tmp_path):
    # The parser never looks at the filesystem: a path that does not exist parses,
    # and a traversal under a real directory is refused without being resolved.
    missing = tmp_path / "nope" / "m.gguf"
    assert parse(str(missing)) == FileRef(str(missing))
    with pytest.raises(InvalidReference):
        parse(f"{tmp_path}/../{tmp_path.name}/m.gguf")


@pytest.mark.parametrize("allowed, ok, refused", [
    (("s3",), ["s3://any/k.gguf"], ["gs://b/k.gguf", "/m/x.gguf", "https://h/x.gguf"]),
    (("s3://",), ["s3://any/k.gguf"], ["gs://b/k.gguf"]),
    (("https:",), ["https://h/x.gguf"], ["http://h/x.gguf"]),
    (("s3://models",), ["s3://models/k.gguf", "s3://models/a/b.gguf"],
     ["s3://models-evil/k.gguf", "s3://other/k.gguf"]),
    (("s3://models/prod/",), ["s3://models/prod/k.gguf"], ["s3://models/dev/k.gguf"]),
    (("/srv/models",), ["/srv/models/a.gguf", "file:///srv/models/b.gguf"],
     ["/srv/modelsx/a.gguf", "/etc/a.gguf"]),
    (("file:///srv/models", "gs://b"), ["/srv/models/a.gguf", "gs://b/k.gguf"],
     ["s3://b/k.gguf"]),
])
def test_allowed_sources(allowed, ok, refused):
    policy = RequestPolicy(allowed)
    for text in ok:
        parse_request(text, policy)
    for text in refused:
        with pytest.raises(InvalidReference, match="not allowed"):
            parse_request(text, policy)


def test_a_caller_names_no_url_or_path_unless_listed():
    # Empty STRATO_ALLOWED_SOURCES: none (it used to mean every scheme).
    for text in ["s3://b/k.gguf", "https://h/x.gguf", "/etc/shadow", "file:///etc/hostname",
                 "./m.gguf"]:
        with pytest.raises(InvalidReference, match="not allowed"):
            parse_request(text, RequestPolicy())
        assert parse(text)      # the operator's own settings are not limited


def test_the_default_model_is_always_allowed():
    policy = RequestPolicy((), default_key=str(parse("/srv/m.gguf")))
    assert parse_request("/srv/m.gguf", policy) == FileRef("/srv/m.gguf")
    assert parse_request("file:///srv/m.gguf", policy) == FileRef("/srv/m.gguf")
    with pytest.raises(InvalidReference):
        parse_request("/srv/other.gguf", policy)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1", "2130706433",
                                  "0x7f000001", "[::1]", "[::ffff:a9fe:a9fe]", "10.0.0.1",
                                  "169.254.169.254", "[fe80::1]", "app.localhost"])
def test_private_literals_need_their_host_listed(host):
    url = f"http://{host}:9000/m.gguf"
    with pytest.raises(InvalidReference, match="private address"):
        parse_request(url, RequestPolicy(("http",)))
    assert parse_request(url, RequestPolicy((f"http://{host}:9000/",)))


def test_registry_references_are_not_subject_to_the_source_list():
    # Their root is STRATO_REGISTRY, chosen by the operator, not by the caller.
    assert parse_request("gemma3:270m", RequestPolicy(("s3://models",))) == \
        RegistryRef("gemma3", "270m")
    assert parse_request(f"g@blake3:{HEX}", RequestPolicy()) == DigestRef("g", HEX)


def test_parse_name_tag_only_accepts_registry_names():
    assert parse_name_tag("gemma3:270m") == RegistryRef("gemma3", "270m")
    assert parse_name_tag("gemma3") == RegistryRef("gemma3", "latest")
    for text in ["s3://b/k.gguf", "/x.gguf", f"g@blake3:{HEX}", "../x"]:
        with pytest.raises(InvalidReference):
            parse_name_tag(text)


def test_non_string_is_refused():
    with pytest.raises(InvalidReference):
        parse(42)  # type: ignore[arg-type]
