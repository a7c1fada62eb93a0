"""Registry and cache subcommands of `strato`: push, pull, list --remote, rm, cache.

Each is one small function plus its flags; handlers/cli.py registers them in COMMANDS.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from core.config import Settings
from handlers.cli_format import ProgressBar, human_size, local_models, table


def _registry_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help="registry root: s3://, gs://, az://, file:// or a "
                   "directory (env STRATO_REGISTRY)")


def _push_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a local GGUF file")
    p.add_argument("name", metavar="NAME:TAG", help="what to publish it as")
    p.add_argument("--compress", choices=("none", "zstd"), default="none",
                   help="store one zstd frame per chunk (default none)")
    p.add_argument("--sign-key", dest="sign_key", metavar="FILE",
                   help="sign the manifest with this Ed25519 key (base64 of 32 raw bytes)")
    p.add_argument("--variant-of", dest="variant_of", metavar="NAME:TAG",
                   help="also list this push as a smaller variant of NAME:TAG (same name), "
                        "which a load of NAME:TAG falls back to when memory runs out")
    _registry_flag(p)


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    """Publish a GGUF: digests, header summary, blob upload, then the manifest."""
    from core.serving import parse_name_tag
    from core.serving import Resolver

    registry = Resolver(settings).registry
    key = None
    if args.sign_key:
        with open(args.sign_key) as f:
            key = f.read().strip()
    bar = ProgressBar(f"push {args.name}")
    result = registry.push(args.file, parse_name_tag(args.name), compress=args.compress,
                           progress=lambda phase, done, total: bar(done, total, phase),
                           sign_key=key)
    bar.close()
    m = result.manifest
    print(f"{m.name}:{m.tag} {m.digest} {human_size(m.size)} "
          f"({'uploaded' if result.uploaded else 'blob already present'}) "
          f"-> {result.manifest_url}")
    if args.variant_of:
        base = registry.add_variant(parse_name_tag(args.variant_of), m, sign_key=key)
        print(f"{base.name}:{base.tag} variants: "
              + ", ".join(f"{v.tag} ({human_size(v.size)})" for v in base.variants))
    return 0


def _pull_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="name:tag, name@blake3:<hex>, s3://, gs://, az://, https://")
    p.add_argument("--tiers", help="local tiers (env STRATO_TIERS)")
    _registry_flag(p)


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch a model into the local disk tiers, verified, with a progress bar."""
    from core.serving import pull

    bar = ProgressBar(f"pull {args.model}")
    result = pull(settings, args.model,
                  on_progress=lambda p: bar(p.done, p.total, "fetch", p.rate))
    bar.close()
    where = ", ".join(result.tiers) or "in place"
    print(f"{result.model} {result.digest or ''} {human_size(result.size)} from "
          f"{result.source} in {result.seconds:.1f}s -> {where}")
    if result.timings is not None:
        print(result.timings.table())
    return 0


def cmd_list_remote(args: argparse.Namespace, settings: Settings) -> int:
    """Models published in the registry."""
    from core.serving import Resolver

    rows = [{"model": f"{m.name}:{m.tag}", "size": human_size(m.size),
             "quantization": m.gguf.file_type or "", "compression": m.compression,
             "digest": m.digest[:19], "created": m.created or ""}
            for m in Resolver(settings).registry.list()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, ("model", "size", "quantization", "compression", "digest",
                           "created")))
    return 0


def _rm_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model reference")
    p.add_argument("--remote", action="store_true",
                   help="delete NAME:TAG from the registry instead of the local tiers")
    p.add_argument("--tiers", help="local tiers (env STRATO_TIERS)")
    _registry_flag(p)


def cmd_rm(args: argparse.Namespace, settings: Settings) -> int:
    """Remove a model from the local tiers, or with --remote from the registry."""
    if args.remote:
        from core.serving import parse_name_tag
        from core.serving import Resolver

        manifest, blob_gone = Resolver(settings).registry.remove(parse_name_tag(args.model))
        print(f"deleted {manifest.name}:{manifest.tag}"
              f"{' and its blob' if blob_gone else ' (blob kept: other tags use it)'}")
        return 0
    from core.serving import remove_local

    print(f"removed {args.model} from {', '.join(remove_local(settings, args.model))}")
    return 0


def _cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--host", help="ask the server at this address (env STRATO_HOST)")
    p.add_argument("--port", type=int, help="and port (env STRATO_PORT)")
    p.add_argument("--tiers", help="local tiers (env STRATO_TIERS)")


def cmd_cache(args: argparse.Namespace, settings: Settings) -> int:
    """Tiers, their models, sizes, hits and misses: from the running server if one
    answers at STRATO_HOST:STRATO_PORT, else what the local tiers hold."""
    report = _server_cache(settings) or _local_cache(settings)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = [{"tier": t["name"], "used": human_size(t.get("usage", 0)),
             "capacity": human_size(t.get("capacity", 0)), "models": len(t.get("entries", [])),
             "hits": t.get("hits", 0), "misses": t.get("misses", 0),
             "written": human_size(t.get("bytes_written", 0)),
             "evictions": t.get("evictions", 0)} for t in report.get("tiers", [])]
    print(table(rows, ("tier", "used", "capacity", "models", "hits", "misses", "written",
                       "evictions")))
    models = local_models(report)
    if models:
        print()
        print(table(models, ("model", "tier", "size", "digest")))
    return 0


def _server_cache(settings: Settings) -> dict[str, Any] | None:
    import httpx

    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        r = httpx.get(f"http://{settings.host}:{settings.port}/v1/cache", headers=headers,
                      timeout=2.0)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def _local_cache(settings: Settings) -> dict[str, Any]:
    from core.serving import build_loader, describe_tiers

    loader, _ = build_loader(settings)
    try:
        return {"tiers": describe_tiers(loader)}
    finally:
        for tier in loader.tiers:
            tier.close()
