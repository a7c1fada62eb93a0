"""Model serving: which model is where, and the operations handlers ask for.

Handlers import from here only. The names are resolved lazily (PEP 562) so that a CLI
command or a Lambda init pays for the modules it uses and no more: importing
`core.serving` costs nothing until a name is touched.

- `ModelService` the contract handlers program against; `ModelManager` implements it
  (`manager`: loading, residency, promotion; `residency`: memory decisions;
  `promotion`: background tier copies).
- `build_loader`, `describe_tiers` (`loader_setup`): the tiered loader from settings.
- `pull`, `remove_local`, `read_header` (`cache_ops`): the CLI's local store operations.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from core.serving.service import ModelService

_LAZY = {
    "ModelManager": "core.serving.manager",
    "build_loader": "core.serving.loader_setup",
    "describe_tiers": "core.serving.loader_setup",
    "pull": "core.serving.cache_ops",
    "remove_local": "core.serving.cache_ops",
    "read_header": "core.serving.cache_ops",
    "PullResult": "core.serving.cache_ops",
    "Resolver": "core.catalog.resolver",
    "parse_name_tag": "core.catalog.references",
    "Engine": "core.engine.protocol",
    "GenerationRequest": "core.engine.protocol",
    "SamplingParams": "core.engine.protocol",
    "TokenEvent": "core.engine.protocol",
    "TokenLogprob": "core.engine.protocol",
}

# Spelled out (not built from _LAZY) so that linters and type checkers see the exports.
__all__ = ["ModelService", "ModelManager", "build_loader", "describe_tiers", "pull",
           "remove_local", "read_header", "PullResult", "Resolver", "parse_name_tag",
           "Engine", "GenerationRequest", "SamplingParams", "TokenEvent", "TokenLogprob"]

if TYPE_CHECKING:
    from core.catalog.references import parse_name_tag
    from core.catalog.resolver import Resolver
    from core.engine.protocol import (
        Engine,
        GenerationRequest,
        SamplingParams,
        TokenEvent,
        TokenLogprob,
    )
    from core.serving.cache_ops import PullResult, pull, read_header, remove_local
    from core.serving.loader_setup import build_loader, describe_tiers
    from core.serving.manager import ModelManager


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'core.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
