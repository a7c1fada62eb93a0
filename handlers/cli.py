"""The `strato` console script.

Each subcommand is one small function plus the flags it adds, registered in `COMMANDS`;
adding a subcommand means appending one `Command`. Settings come from `STRATO_*`
(core.config.from_env) and the flags given override them with `dataclasses.replace`,
so every flag has an environment twin. Failures print one line naming the cause and
exit non-zero; tracebacks are for bugs, not for a missing file or a bad digest.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from core.config import Settings, from_env, validate
from core.errors import BadRequest, StratoError
from tiers.errors import StorageError

# Flags that map one-to-one onto Settings fields (flag dest -> field name).
SETTINGS_FLAGS = ("model", "host", "port", "ctx", "threads", "registry", "tiers",
                  "api_key", "log_level")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]


# --- serve ---------------------------------------------------------------------------


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model reference (env STRATO_MODEL); "
                   "default: the bundled Gemma 3 270M")
    p.add_argument("--host", help="bind address (env STRATO_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (env STRATO_PORT, default 8080)")
    p.add_argument("--api-key", dest="api_key", help="require this bearer key "
                   "(env STRATO_API_KEY)")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """OpenAI API on uvicorn until interrupted."""
    import uvicorn

    from handlers.http import build_service, serve_app

    app = serve_app(settings, build_service(settings))
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=5)
    return 0


# --- run -----------------------------------------------------------------------------


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model reference (name:tag, path, s3://, ...)")
    p.add_argument("prompt", nargs="?", help="one prompt; without it, an interactive chat")
    p.add_argument("--max-tokens", type=int, default=512, help="per answer (default 512)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """One answer to PROMPT, or a chat read from stdin until EOF or /bye."""
    if args.max_tokens < 1:
        raise BadRequest("--max-tokens must be at least 1")
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from core.generation import GenerationRequest, SamplingParams
    from handlers.http import build_service

    service = build_service(settings)
    try:
        engine = await service.engine(args.model)
        sampling = SamplingParams(temperature=args.temperature)
        history: list[dict[str, str]] = []
        interactive = args.prompt is None
        loop = asyncio.get_running_loop()
        while True:
            if interactive:
                line = await loop.run_in_executor(None, _read_line, ">>> ")
                if line is None or line.strip() in ("/bye", "/exit"):
                    return 0
                if not line.strip():
                    continue
            else:
                line = args.prompt
            history.append({"role": "user", "content": line})
            request = GenerationRequest(prompt=engine.render_chat(history),
                                        max_tokens=args.max_tokens, sampling=sampling)
            parts = []
            async for event in engine.generate(request):
                parts.append(event.text)
                sys.stdout.write(event.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": "".join(parts)})
            if not interactive:
                return 0
    finally:
        await service.close()


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt if sys.stdin.isatty() else "")
    except EOFError:
        return None


# --- list ----------------------------------------------------------------------------


def _list_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--remote", action="store_true", help="models in the registry instead")
    _registry_flag(p)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """Models held in the local tiers (what would load without a download)."""
    if getattr(args, "remote", False):
        return cmd_list_remote(args, settings)
    rows = local_models(_local_cache(settings))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, ("model", "tier", "size", "digest")))
    return 0


def local_models(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a cache report into one row per (model, tier)."""
    rows = []
    for tier in report.get("tiers", []):
        for entry in tier.get("models", tier.get("entries", [])):
            rows.append({"model": entry.get("name") or entry.get("model") or "?",
                         "tier": tier.get("name") or tier.get("kind") or "?",
                         "size": human_size(entry.get("size", entry.get("size_bytes", 0))),
                         "digest": str(entry.get("digest", ""))[:19]})
    return rows


# --- inspect -------------------------------------------------------------------------


def _inspect_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a local GGUF path or a model reference")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    """What the GGUF header says: architecture, quantization, context, layers, template."""
    summary = inspect_model(args.model, settings)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    template = summary["chat_template"]
    for key, label in (("name", "name"), ("architecture", "architecture"),
                       ("quantization", "quantization"), ("context_length", "context length"),
                       ("layers", "layers"), ("tensors", "tensors"), ("size", "size")):
        print(f"{label:<15} {summary[key]}")
    print(f"{'chat template':<15} {'(none: strato uses its fallback)' if not template else ''}")
    if template:
        print(template)
    return 0


def inspect_model(ref: str, settings: Settings) -> dict[str, Any]:
    """Header summary of a local file, or of any reference by reading only the first
    megabytes of its object (ranged reads; zstd blobs decompress just those frames)."""
    header, size = read_header_of(ref, settings)
    return {"name": header.name, "architecture": header.architecture,
            "quantization": header.file_type, "context_length": header.context_length,
            "layers": header.block_count, "tensors": len(header.tensors),
            "size": human_size(size), "chat_template": header.chat_template}


def read_header_of(ref: str, settings: Settings) -> tuple[Any, int]:
    import os

    from core.resolver import Resolver
    from tiers import remote
    from tiers.gguf_header import read_header, read_header_file

    resolver = Resolver(settings)
    source = resolver.resolve(resolver.parse(ref))
    if source.path is not None:
        return read_header_file(source.path), os.path.getsize(source.path)
    plan = source.plan
    assert plan is not None
    size = plan.size if plan.size is not None else remote.info(plan.url).size
    if plan.compression == "zstd" and plan.frame_offsets:
        return read_header(_zstd_reader(plan), size), size
    return read_header(lambda start, end: remote.read_range(plan.url, start, end), size), size


def _zstd_reader(plan: Any) -> Callable[[int, int], bytes]:
    """Raw ranged reads over a blob stored as one zstd frame per chunk."""
    import zstandard

    from tiers import remote

    frames: dict[int, bytes] = {}

    def chunk(index: int) -> bytes:
        if index not in frames:
            offsets = plan.frame_offsets
            frame = remote.read_range(plan.url, offsets[index], offsets[index + 1])
            # decompressobj: frames without a content-size field decompress too.
            frames[index] = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
        return frames[index]

    def read(start: int, end: int) -> bytes:
        out, pos = [], start
        while pos < end and pos // plan.chunk_size < len(plan.frame_offsets) - 1:
            index = pos // plan.chunk_size
            data = chunk(index)
            base = index * plan.chunk_size
            out.append(data[pos - base:end - base])
            pos = base + len(data)
        return b"".join(out)

    return read


# --- helpers and the table -----------------------------------------------------------


def human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths))
              for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# --- registry and local store: push, pull, list --remote, rm, cache -------------------


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
    _registry_flag(p)


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    """Publish a GGUF: digests, header summary, blob upload, then the manifest."""
    from core.references import parse_name_tag
    from core.resolver import Resolver

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
    return 0


def _pull_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="name:tag, name@blake3:<hex>, s3://, gs://, az://, https://")
    p.add_argument("--tiers", help="local tiers (env STRATO_TIERS)")
    _registry_flag(p)


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch a model into the local disk tiers, verified, with a progress bar."""
    from core.store import pull

    bar = ProgressBar(f"pull {args.model}")
    result = pull(settings, args.model,
                  on_progress=lambda p: bar(p.done, p.total, "fetch", p.rate))
    bar.close()
    where = ", ".join(result.tiers) or "in place"
    print(f"{result.model} {result.digest or ''} {human_size(result.size)} from "
          f"{result.source} in {result.seconds:.1f}s -> {where}")
    return 0


def cmd_list_remote(args: argparse.Namespace, settings: Settings) -> int:
    """Models published in the registry."""
    from core.resolver import Resolver

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
        from core.references import parse_name_tag
        from core.resolver import Resolver

        manifest, blob_gone = Resolver(settings).registry.remove(parse_name_tag(args.model))
        print(f"deleted {manifest.name}:{manifest.tag}"
              f"{' and its blob' if blob_gone else ' (blob kept: other tags use it)'}")
        return 0
    from core.store import remove_local

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
    from core.store import build_loader, describe_tiers

    loader, _ = build_loader(settings)
    try:
        return {"tiers": describe_tiers(loader)}
    finally:
        for tier in loader.tiers:
            if hasattr(tier, "close"):
                tier.close()


class ProgressBar:
    """One self-rewriting stderr line: bytes, percent, MB/s, ETA (plain text when piped)."""

    def __init__(self, label: str) -> None:
        import time

        self.label, self.start, self.last, self.clock = label, time.monotonic(), 0.0, time
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int, phase: str = "", rate: float | None = None
                 ) -> None:
        now = self.clock.monotonic()
        if done < total and now - self.last < (0.1 if self.tty else 2.0):
            return
        self.last = now
        rate = rate if rate is not None else done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        pct = 100.0 * done / total if total else 100.0
        width = 24
        filled = int(width * pct / 100)
        line = (f"{self.label} {phase} [{'#' * filled}{'.' * (width - filled)}] "
                f"{pct:5.1f}% {human_size(done)}/{human_size(total)} "
                f"{rate / 1e6:.1f} MB/s eta {eta:.0f}s")
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


COMMANDS: list[Command] = [
    Command("serve", "serve the OpenAI-compatible API", _serve_flags, cmd_serve),
    Command("run", "answer one prompt, or chat", _run_flags, cmd_run),
    Command("list", "models in the local tiers", _list_flags, cmd_list),
    Command("inspect", "show a GGUF's header", _inspect_flags, cmd_inspect),
    Command("push", "publish a GGUF to the registry", _push_flags, cmd_push),
    Command("pull", "fetch a model into the local tiers", _pull_flags, cmd_pull),
    Command("rm", "remove a model (local tiers, or --remote)", _rm_flags, cmd_rm),
    Command("cache", "tiers, sizes, hits and misses", _cache_flags, cmd_cache),
]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ctx", type=int, help="context tokens (env STRATO_CTX)")
    common.add_argument("--threads", type=int, help="CPU threads (env STRATO_THREADS)")
    common.add_argument("--log-level", dest="log_level", help="env STRATO_LOG_LEVEL")
    parser = argparse.ArgumentParser(prog="strato", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, parents=[common],
                           description=command.run.__doc__)
        command.configure(p)
        p.set_defaults(func=command.run)
    return parser


def settings_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    """Environment first, then every flag that was given."""
    overrides = {name: getattr(args, name) for name in SETTINGS_FLAGS
                 if getattr(args, name, None) is not None}
    return validate(dataclasses.replace(from_env(env), **overrides))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, settings_from(args))
    except (StratoError, StorageError) as exc:
        print(f"strato {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
