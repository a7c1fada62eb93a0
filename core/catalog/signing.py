"""Ed25519 manifest signatures: who published a model, checked before any byte is fetched.

A signature covers `Manifest.signing_payload()` (canonical JSON of every field but the
signature itself), and the manifest names every chunk's BLAKE3, so one signature vouches
for the whole blob. A manifest that carries a signature must verify, or it is refused;
`trusted` (STRATO_TRUSTED_KEYS) narrows which public keys are accepted, and once it is
set an unsigned manifest is refused too; empty accepts any key, which detects a
manifest changed after signing but not a re-signed one.

A bad key handed to `sign` (the publisher's own file) is a BadRequest, a usage error;
a manifest that fails `verify` is an InvalidManifest, the registry's fault (502).

Keys are base64 of the raw 32-byte Ed25519 keys. `cryptography` is imported lazily so
reading an unsigned manifest costs nothing.
"""

from __future__ import annotations

import base64
from typing import Collection

from core.catalog.manifest import Manifest, Signature
from core.errors import BadRequest, InvalidManifest

ALGORITHM = "ed25519"


def generate_key() -> tuple[str, str]:
    """A new (private, public) key pair, base64 of the raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def sign(manifest: Manifest, private_key: str) -> Manifest:
    """The manifest with an Ed25519 signature by `private_key` (base64, raw 32 bytes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key.strip()))
    except ValueError as exc:
        raise BadRequest(f"not an Ed25519 private key (base64 of 32 bytes): {exc}",
                         code="invalid_signing_key") from None
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    value = key.sign(manifest.with_signature(None).signing_payload())
    return manifest.with_signature(Signature(ALGORITHM, base64.b64encode(public).decode(),
                                             base64.b64encode(value).decode()))


def verify(manifest: Manifest, trusted: Collection[str] = ()) -> bool:
    """False for an unsigned manifest (when `trusted` is empty); True for a valid
    signature by an accepted key.

    Raises InvalidManifest for a signature that does not verify, and, when `trusted`
    is given, for a key not in it or no signature at all.
    """
    sig = manifest.signature
    where = f"manifest {manifest.name}:{manifest.tag}"
    if sig is None:
        if trusted:
            raise InvalidManifest(f"{where} is not signed, and STRATO_TRUSTED_KEYS "
                                  "requires a signature by one of its keys")
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if trusted and sig.public_key not in trusted:
        raise InvalidManifest(f"{where} is signed by an untrusted key {sig.public_key}")
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig.public_key))
        key.verify(base64.b64decode(sig.value), manifest.signing_payload())
    except (InvalidSignature, ValueError):
        raise InvalidManifest(f"{where}: its Ed25519 signature does not verify "
                              "(changed after signing?)") from None
    return True
