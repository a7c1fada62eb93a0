"""Settings: one typed object, read from the environment once and validated at start.

Every CLI flag has an environment twin (`STRATO_*`); the CLI overrides fields with
`dataclasses.replace`. Cloud credentials and endpoints are deliberately absent: each SDK
reads its own standard variables (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST,
AZURE_STORAGE_CONNECTION_STRING, ...), so one deployment works on emulators and clouds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.errors import ConfigError
from tiers.tier_config import parse_size


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "strato"


@dataclass(frozen=True)
class Settings:
    model: str | None = None                 # STRATO_MODEL: default model reference
    host: str = "127.0.0.1"                  # STRATO_HOST
    port: int = 8080                         # STRATO_PORT
    ctx: int = 4096                          # STRATO_CTX: context tokens (per model)
    threads: int | None = None               # STRATO_THREADS: None = all cores
    parallel: int = 8                        # STRATO_PARALLEL: concurrent sequences
    max_queue: int = 64                      # STRATO_MAX_QUEUE: waiting requests
    max_body: int = 4 << 20                  # STRATO_MAX_BODY: request bytes (413 past it)
    max_tokens_limit: int = 32768            # STRATO_MAX_TOKENS_LIMIT: absurd above this
    load_timeout: float = 600.0              # STRATO_LOAD_TIMEOUT: wait for a load, else 503
    shutdown_grace: float = 25.0             # STRATO_SHUTDOWN_GRACE: SIGTERM drain, seconds
    api_key: str | None = None               # STRATO_API_KEY: bearer key, optional
    registry: str | None = None              # STRATO_REGISTRY: fsspec root of manifests/blobs
    tiers: str = ""                          # STRATO_TIERS: "" = default_tiers()
    allowed_sources: tuple[str, ...] = ()    # STRATO_ALLOWED_SOURCES: () = no URL/path
    trusted_keys: tuple[str, ...] = ()       # STRATO_TRUSTED_KEYS: Ed25519 keys, base64
    streams: int = 16                        # STRATO_STREAMS: concurrent ranged reads
    chunk: int = 8 << 20                     # STRATO_CHUNK: bytes per ranged read / chunk
    promote_per_hour: float = 5.0            # STRATO_PROMOTE_PER_HOUR
    prefetch_threshold: float = 0.5          # STRATO_PREFETCH_THRESHOLD
    n_gpu_layers: int | None = None          # STRATO_GPU_LAYERS: None = computed
    # Lambda (handlers/aws_lambda.py, handlers/lambda_modes.py): seconds of process age after
    # which an on-demand init returns and lets the model load on; 0 waits for the load.
    init_budget: float = 8.0                 # STRATO_INIT_BUDGET
    # llama.cpp's weight repacking (AVX2/NEON layouts of Q4 weights, in private memory).
    # Off by default, unlike llama.cpp: it reads every repacked weight inside the load,
    # so a cold build cannot finish before the last byte arrives (README, cold start).
    repack: bool = False                     # STRATO_REPACK: 1/0
    log_level: str = "INFO"                  # STRATO_LOG_LEVEL
    extra: Mapping[str, Any] = field(default_factory=dict)

    def default_tiers(self) -> str:
        """RAM plus a local disk cache: what a laptop or a container wants."""
        return f"ram:4GiB,disk:{default_cache_dir()}:20GiB"

    def tiers_spec(self) -> str:
        return self.tiers or self.default_tiers()

    def public(self) -> dict[str, Any]:
        """For the one start-up log line: everything but the key."""
        data = asdict(self)
        data["api_key"] = "***" if self.api_key else None
        return data


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(f"STRATO_{name}")
    return value if value not in (None, "") else None


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate Settings from `STRATO_*` variables."""
    env = os.environ if env is None else env
    kwargs: dict[str, Any] = {}
    ints = {"PORT": "port", "CTX": "ctx", "THREADS": "threads", "PARALLEL": "parallel",
            "MAX_QUEUE": "max_queue", "STREAMS": "streams", "GPU_LAYERS": "n_gpu_layers",
            "MAX_TOKENS_LIMIT": "max_tokens_limit"}
    sizes = {"MAX_BODY": "max_body", "CHUNK": "chunk"}
    floats = {"LOAD_TIMEOUT": "load_timeout", "SHUTDOWN_GRACE": "shutdown_grace",
              "PROMOTE_PER_HOUR": "promote_per_hour",
              "PREFETCH_THRESHOLD": "prefetch_threshold", "INIT_BUDGET": "init_budget"}
    strings = {"MODEL": "model", "HOST": "host", "API_KEY": "api_key",
               "REGISTRY": "registry", "TIERS": "tiers", "LOG_LEVEL": "log_level"}
    for name, attr in ints.items():
        if (v := _env(env, name)) is not None:
            try:
                kwargs[attr] = int(v)
            except ValueError:
                raise ConfigError(f"STRATO_{name} must be an integer, got {v!r}") from None
    for name, attr in sizes.items():
        if (v := _env(env, name)) is not None:
            try:
                kwargs[attr] = parse_size(v)
            except ValueError as exc:          # tiers.tier_config.TierSpecError
                raise ConfigError(f"STRATO_{name}: {exc}") from None
    for name, attr in floats.items():
        if (v := _env(env, name)) is not None:
            try:
                kwargs[attr] = float(v)
            except ValueError:
                raise ConfigError(f"STRATO_{name} must be a number, got {v!r}") from None
    for name, attr in strings.items():
        if (v := _env(env, name)) is not None:
            kwargs[attr] = v
    if (v := _env(env, "REPACK")) is not None:
        if v.strip().lower() not in ("1", "0", "true", "false", "on", "off"):
            raise ConfigError(f"STRATO_REPACK must be 1 or 0, got {v!r}")
        kwargs["repack"] = v.strip().lower() in ("1", "true", "on")
    for name, attr in (("ALLOWED_SOURCES", "allowed_sources"),
                       ("TRUSTED_KEYS", "trusted_keys")):
        if (v := _env(env, name)) is not None:
            kwargs[attr] = tuple(p.strip() for p in v.split(",") if p.strip())
    return validate(Settings(**kwargs))


def validate(settings: Settings) -> Settings:
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port out of range: {settings.port}")
    if settings.init_budget < 0:
        raise ConfigError(f"init_budget must be 0 (off) or positive, got {settings.init_budget}")
    for attr in ("ctx", "parallel", "max_queue", "streams", "chunk", "max_body"):
        if getattr(settings, attr) <= 0:
            raise ConfigError(f"{attr} must be positive, got {getattr(settings, attr)}")
    return settings
