"""Ed25519 manifest signatures without a registry round trip: what a signature covers,
which keys are accepted, and that a broken key or signature is refused, never ignored."""

from __future__ import annotations

import dataclasses

import pytest

from core.catalog import signing
from core.catalog.manifest import InvalidManifest, Manifest
from core.catalog.references import parse_name_tag
from core.catalog.registry import Registry
from core.errors import BadRequest
from tests.tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("signing")
    model = write_tiny_gguf(root / "tiny.gguf", blocks=2)
    return Registry(str(root / "registry"), chunk_size=4096).push(
        str(model), parse_name_tag("tiny:v1")).manifest


def test_a_signature_verifies_with_its_key_and_names_it(manifest: Manifest) -> None:
    private, public = signing.generate_key()
    signed = signing.sign(manifest, private)
    assert signed.signature is not None and signed.signature.public_key == public
    assert signed.signature.algorithm == signing.ALGORITHM
    assert signing.verify(signed) and signing.verify(signed, trusted=[public])
    assert signed.with_signature(None) == manifest    # the signature is all that changed


def test_unsigned_is_false_and_untrusted_or_changed_is_refused(manifest: Manifest) -> None:
    assert signing.verify(manifest) is False
    private, _ = signing.generate_key()
    _, other = signing.generate_key()
    signed = signing.sign(manifest, private)
    with pytest.raises(InvalidManifest, match="untrusted key"):
        signing.verify(signed, trusted=[other])
    for field, value in (("tag", "v2"), ("size", manifest.size + 1),
                         ("digest", "blake3:" + "0" * 64)):
        changed = dataclasses.replace(signed, **{field: value})
        with pytest.raises(InvalidManifest, match="does not verify"):
            signing.verify(changed)


def test_a_signature_by_one_key_cannot_be_claimed_by_another(manifest: Manifest) -> None:
    private, _ = signing.generate_key()
    _, impostor = signing.generate_key()
    signed = signing.sign(manifest, private)
    assert signed.signature is not None
    forged = signed.with_signature(dataclasses.replace(signed.signature, public_key=impostor))
    with pytest.raises(InvalidManifest, match="does not verify"):
        signing.verify(forged, trusted=[impostor])


@pytest.mark.parametrize("key", ["", "not base64!", "c2hvcnQ="])
def test_a_bad_private_key_is_a_usage_error(manifest: Manifest, key: str) -> None:
    # The publisher's own key file, not the registry's manifest: a 400, not a 502.
    with pytest.raises(BadRequest, match="not an Ed25519 private key"):
        signing.sign(manifest, key)
