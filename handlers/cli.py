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
from core.errors import BadRequest, ConfigError, StratoError
from handlers.cli_format import human_size, local_models, table
from handlers.cli_registry import (
    _cache_flags,
    _local_cache,
    _pull_flags,
    _push_flags,
    _registry_flag,
    _rm_flags,
    cmd_cache,
    cmd_list_remote,
    cmd_pull,
    cmd_push,
    cmd_rm,
)
from tiers.errors import StorageError
from tiers.timing import boottime, mark, process_start

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
    p.add_argument("--timings", action="store_true",
                   help="print the load's phase timings (process start to first token) "
                        "on stderr")
    p.add_argument("--raw", action="store_true",
                   help="send the prompt as-is, without the model's chat template "
                        "(a completion, no conversation history)")


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """One answer to PROMPT, or a chat read from stdin until EOF or /bye."""
    if args.max_tokens < 1:
        raise BadRequest("--max-tokens must be at least 1")
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    # The model manager itself, not handlers.http's build_service: the HTTP stack
    # (Starlette) is not needed for one answer and costs a cold start its import.
    from core.serving import GenerationRequest, ModelManager, SamplingParams

    service = ModelManager(settings)
    try:
        engine = await service.engine(args.model)
        ready: float | None = boottime()
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
            if not args.raw:
                history.append({"role": "user", "content": line})
            request = GenerationRequest(prompt=line if args.raw else engine.render_chat(history),
                                        max_tokens=args.max_tokens, sampling=sampling)
            parts = []
            async for event in engine.generate(request):
                if ready is not None:
                    _first_token(service, engine.info.name, ready, args.timings)
                    ready = None
                parts.append(event.text)
                sys.stdout.write(event.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            if not args.raw:
                history.append({"role": "assistant", "content": "".join(parts)})
            if not interactive:
                return 0
    finally:
        await service.close()


def _first_token(service: Any, model: str, ready: float, show: bool) -> None:
    """The load's last phase (engine ready -> first token) into its timings, and the
    table on stderr with --timings."""
    timings = getattr(service, "timings", {}).get(model)
    if timings is None:
        return
    timings.add("first_token", ready)
    timings.note_cpu()
    timings.observe(("first_token",))
    if show:
        print(timings.table(), file=sys.stderr, flush=True)


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
    from core.serving import read_header

    header, size = read_header(ref, settings)
    return {"name": header.name, "architecture": header.architecture,
            "quantization": header.file_type, "context_length": header.context_length,
            "layers": header.block_count, "tensors": len(header.tensors),
            "size": human_size(size), "chat_template": header.chat_template}


# --- helpers and the table -----------------------------------------------------------


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
        settings = settings_from(args)
        mark("settings", process_start() or boottime())
        code: int = args.func(args, settings)
        return code
    except ConfigError as exc:      # the settings, not the command: argparse's exit code
        print(f"strato {args.command}: configuration: {exc}", file=sys.stderr)
        return 2
    except (StratoError, StorageError) as exc:
        print(f"strato {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
