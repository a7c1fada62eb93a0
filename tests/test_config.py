"""Settings from STRATO_* variables: every kind of field, the one size parser, and a
clear ConfigError that names the variable for every bad value (the operator's error:
the CLI prints one line and exits 2)."""

from __future__ import annotations

import pytest

from core.config import Settings, from_env, validate
from core.errors import ConfigError
from tiers.tier_config import TierSpecError, parse_size


def test_defaults_without_any_variable() -> None:
    assert from_env({}) == Settings()
    assert Settings().tiers_spec() == Settings().default_tiers()
    assert Settings(tiers="ram:1GiB").tiers_spec() == "ram:1GiB"


def test_every_kind_of_field_is_read() -> None:
    s = from_env({"STRATO_PORT": "9000", "STRATO_CTX": "2048", "STRATO_THREADS": "3",
                  "STRATO_MAX_BODY": "2MiB", "STRATO_CHUNK": "16 MiB",
                  "STRATO_LOAD_TIMEOUT": "1.5", "STRATO_MODEL": "gemma3:270m",
                  "STRATO_ALLOWED_SOURCES": " s3 , https,,", "STRATO_API_KEY": "sekrit-42",
                  "STRATO_HOST": ""})
    assert (s.port, s.ctx, s.threads) == (9000, 2048, 3)
    assert (s.max_body, s.chunk) == (2 << 20, 16 << 20)
    assert s.load_timeout == 1.5 and s.model == "gemma3:270m"
    assert s.allowed_sources == ("s3", "https")
    assert s.host == "127.0.0.1"                  # empty means unset
    assert s.public()["api_key"] == "***" and "sekrit-42" not in str(s.public())


@pytest.mark.parametrize("name, value, words", [
    ("PORT", "eighty", "STRATO_PORT must be an integer"),
    ("LOAD_TIMEOUT", "soon", "STRATO_LOAD_TIMEOUT must be a number"),
    ("CHUNK", "8 parsecs", "STRATO_CHUNK: not a size"),
    ("MAX_BODY", "-1MiB", "STRATO_MAX_BODY: not a size"),
    ("PORT", "70000", "port out of range"),
    ("CTX", "0", "ctx must be positive"),
])
def test_bad_values_are_config_errors_naming_the_variable(name: str, value: str,
                                                           words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        from_env({f"STRATO_{name}": value})
    assert info.value.code == "invalid_configuration"


def test_validate_checks_settings_built_in_code_too() -> None:
    assert validate(Settings(parallel=2)).parallel == 2
    with pytest.raises(ConfigError, match="parallel must be positive"):
        validate(Settings(parallel=0))


@pytest.mark.parametrize("text, size", [
    ("100", 100), ("512MiB", 512 << 20), ("512mb", 512 << 20), ("1.5GB", 3 << 29),
    (" 8 GiB ", 8 << 30), ("2T", 2 << 40), ("4k", 4096), ("7b", 7),
])
def test_one_size_parser_for_tiers_and_settings(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert from_env({"STRATO_CHUNK": text}).chunk == size


@pytest.mark.parametrize("text", ["", "lots", "8 parsecs", "-1", "1e3", "GiB"])
def test_what_is_not_a_size(text: str) -> None:
    with pytest.raises(TierSpecError, match="not a size"):
        parse_size(text)
