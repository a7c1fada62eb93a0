"""Every error strato raises on purpose, in one place.

Each carries the OpenAI envelope fields (`type`, `code`, `param`) and its HTTP status, so
handlers render any of them with one function and never guess. Storage failures are typed
in `tiers.errors` (tiers cannot import core) and mapped here by `status_of`.
"""

from __future__ import annotations

from tiers import errors as storage


class StratoError(Exception):
    """Base: a message meant for the user, plus how to render it."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class BadRequest(StratoError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidReference(BadRequest):
    """A model reference that is malformed or outside STRATO_ALLOWED_SOURCES."""

    code = "invalid_model_reference"


class ContextOverflow(BadRequest):
    code = "context_length_exceeded"


class ConfigError(StratoError):
    """A setting (STRATO_*, a CLI flag) the server cannot run with: the operator's
    error, reported once as one line naming the variable (the CLI exits 2)."""

    code = "invalid_configuration"


class Unauthorized(StratoError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class ModelNotFound(StratoError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class NotFound(StratoError):
    """A stored object (a response id) this instance does not have."""

    status, type, code = 404, "invalid_request_error", "not_found"


class PayloadTooLarge(StratoError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class QueueFull(StratoError):
    status, type, code = 429, "rate_limit_error", "queue_full"


class InvalidManifest(StratoError):
    """A manifest in the registry that does not parse, fails the schema, contradicts
    itself, or whose signature does not verify (or is missing, or by a key outside
    STRATO_TRUSTED_KEYS). The registry is the operator's store, not the caller's
    request: a 502, like a proxy whose upstream answered garbage."""

    status, type, code = 502, "server_error", "invalid_manifest"


class ModelUnavailable(StratoError):
    """Loading, failed to load, or no model configured: try again later."""

    status, type, code = 503, "server_error", "model_unavailable"


class OutOfMemory(ModelUnavailable):
    """llama.cpp could not allocate the model or its context (device or host memory).

    The model manager answers it with fewer GPU layers, then smaller variants; only
    when every one of those fails does a client see it."""

    code = "out_of_memory"


_STORAGE_STATUS: dict[type[storage.StorageError], tuple[int, str]] = {
    storage.ObjectNotFound: (404, "model_not_found"),
    storage.AddressRefused: (400, "invalid_model_reference"),
    storage.SourceUnavailable: (503, "source_unavailable"),
    storage.IntegrityError: (503, "integrity_error"),
    storage.CorruptModel: (503, "corrupt_model"),
    storage.TierFull: (503, "tier_full"),
    storage.DiskFull: (503, "disk_full"),
}


def status_of(exc: BaseException) -> tuple[int, str, str | None]:
    """(HTTP status, OpenAI error type, code) for any exception: the one mapping table."""
    if isinstance(exc, StratoError):
        return exc.status, exc.type, exc.code
    for cls, (status, code) in _STORAGE_STATUS.items():
        if isinstance(exc, cls):
            kind = "invalid_request_error" if status < 500 else "server_error"
            return status, kind, code
    return 500, "server_error", "internal_error"
