"""Serving benchmark: strato beside llama-cpp-python direct, llama_cpp.server, llama-server.

Not a test: a script a human runs on a quiet machine, which prints one table and the
ratios that issues 2 and 5 set as targets. Same model (the bundled Gemma 3 270M GGUF),
same prompts, same thread count and context size, one run, one server at a time so no
two compete for the cores.

    .venv/bin/python bench/serve.py                  # full run (several minutes)
    .venv/bin/python bench/serve.py --quick          # fewer requests: proves it works
    .venv/bin/python bench/serve.py --skip llama-server --skip llama_cpp.server
    .venv/bin/python bench/serve.py --json out.json  # raw figures as well

Prerequisite for the two reference servers: `bench/build_llama_server.sh` (builds
llama.cpp's `llama-server` from the sdist strato pins, and a separate venv holding
`llama-cpp-python[server]`, so strato's own .venv stays free of fastapi & co).

Every stream asks for the same `max_tokens` at temperature 0 with a fixed seed, on a
prompt (continue a long run of numbers) that the model never ends early; a stream that
comes back shorter is counted as truncated and shown in the table, never hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import httpx  # noqa: E402
from common import ServerProcess, StreamResult, free_port, log, percentile, stream_completion  # noqa: E402
from report import render  # noqa: E402

BUILD = HERE / ".build"
LLAMA_SERVER_BIN = BUILD / "bin" / "llama-server"
LLAMA_CPP_SERVER_PY = BUILD / "venv-llama-server-py" / "bin" / "python"
SYSTEMS = ("direct", "strato", "llama_cpp.server", "llama-server")


def make_prompt(i: int) -> str:
    """A distinct prompt per request whose greedy continuation runs far past max_tokens.

    Distinct so no server answers from a cached identical prompt; numeric so the output
    never ends early and every token is plain ASCII (one token per SSE chunk).
    """
    start = 100 + 37 * i
    seq = ", ".join(str(n) for n in range(start, start + 6))
    return f"Here are the numbers from {start} to {start + 5000}, separated by commas: {seq},"


@dataclass
class LevelResult:
    """One concurrency level: `streams` requests sent at once, `waves` times."""

    streams: int
    agg_tps: float = math.nan
    ttft_p50: float = math.nan
    ttft_p95: float = math.nan
    requests: int = 0
    truncated: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class SystemResult:
    name: str
    ttft_p50: float = math.nan        # warm single-stream TTFT, seconds
    decode_tps: float = math.nan      # single-stream decode tokens/s (median)
    single_truncated: int = 0
    single_texts: list[str] = field(default_factory=list)  # to compare outputs across columns
    levels: dict[int, LevelResult] = field(default_factory=dict)
    skipped: str | None = None        # why this column is empty


@dataclass(frozen=True)
class Plan:
    model: Path
    max_tokens: int
    warmup: int
    requests: int
    waves: int
    levels: tuple[int, ...]
    threads: int
    ctx: int
    parallel: int


def summarize_single(name: str, results: list[StreamResult], max_tokens: int) -> SystemResult:
    ok = [r for r in results if r.error is None]
    out = SystemResult(name)
    out.ttft_p50 = statistics.median(r.ttft for r in ok) if ok else math.nan
    tps = [r.decode_tps() for r in ok if not math.isnan(r.decode_tps())]
    out.decode_tps = statistics.median(tps) if tps else math.nan
    out.single_truncated = sum(not r.complete(max_tokens) for r in results)
    out.single_texts = [r.text for r in results]
    return out


# --- llama-cpp-python in-process: the floor every HTTP server adds overhead to ---------

def run_direct(plan: Plan) -> SystemResult:
    """Stream completions from llama_cpp.Llama in this process, one at a time.

    No HTTP, no queue: the difference between this column and strato's single stream is
    exactly what strato's server, scheduler and SSE rendering cost.
    """
    from llama_cpp import Llama

    llm = Llama(model_path=str(plan.model), n_ctx=plan.ctx, n_threads=plan.threads,
                n_threads_batch=plan.threads, seed=42, verbose=False)
    results: list[StreamResult] = []
    try:
        for i in range(plan.warmup + plan.requests):
            r = StreamResult()
            t0 = time.perf_counter()
            first = last = math.nan
            for chunk in llm.create_completion(make_prompt(i), max_tokens=plan.max_tokens,
                                               temperature=0.0, seed=42, stream=True):
                now = time.perf_counter()
                choice = chunk["choices"][0]
                if choice.get("text"):
                    if r.chunks == 0:
                        first = now
                    last = now
                    r.chunks += 1
                    r.text += choice["text"]
                r.finish_reason = choice.get("finish_reason") or r.finish_reason
            r.elapsed = time.perf_counter() - t0
            r.tokens = r.chunks
            r.ttft, r.first_to_last = first - t0, last - first
            if i >= plan.warmup:
                results.append(r)
    finally:
        llm.close()
    return summarize_single("direct", results, plan.max_tokens)


# --- HTTP servers ------------------------------------------------------------------------

async def _model_id(client: httpx.AsyncClient, base: str) -> str:
    """The id the server lists first: what its completions endpoint expects in `model`."""
    resp = await client.get(f"{base}/v1/models")
    resp.raise_for_status()
    return str(resp.json()["data"][0]["id"])


async def bench_http(name: str, base: str, plan: Plan) -> SystemResult:
    """Warm single-stream TTFT and decode, then each concurrency level, through HTTP."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        model = await _model_id(client, base)
        url = f"{base}/v1/completions"

        def body(i: int) -> dict[str, Any]:
            return {"model": model, "prompt": make_prompt(i), "max_tokens": plan.max_tokens,
                    "temperature": 0.0, "seed": 42,
                    # usage in the last chunk: the token count then does not depend on how
                    # a server groups tokens into chunks. Servers without it ignore it.
                    "stream_options": {"include_usage": True}}

        results: list[StreamResult] = []
        for i in range(plan.warmup + plan.requests):
            r = await stream_completion(client, url, body(i))
            if r.error:
                log(f"  {name}: request {i} failed: {r.error}")
            if i >= plan.warmup:
                results.append(r)
        out = summarize_single(name, results, plan.max_tokens)
        log(f"  {name}: warm TTFT {out.ttft_p50 * 1e3:.1f} ms, decode {out.decode_tps:.1f} tok/s")

        offset = 1000  # fresh prompts, never seen in the single-stream phase
        for n in plan.levels:
            level = LevelResult(n)
            walls: list[float] = []
            tokens = 0
            ttfts: list[float] = []
            for _ in range(plan.waves):
                t0 = time.perf_counter()
                wave = await asyncio.gather(*(stream_completion(client, url, body(offset + k))
                                              for k in range(n)))
                walls.append(time.perf_counter() - t0)
                offset += n
                for r in wave:
                    level.requests += 1
                    tokens += r.tokens
                    if r.error:
                        level.errors.append(r.error)
                    else:
                        ttfts.append(r.ttft)
                    level.truncated += not r.complete(plan.max_tokens)
            level.agg_tps = tokens / sum(walls)
            level.ttft_p50 = percentile(ttfts, 50)
            level.ttft_p95 = percentile(ttfts, 95)
            out.levels[n] = level
            log(f"  {name}: {n:>2} streams: {level.agg_tps:.1f} tok/s aggregate, TTFT p50 "
                f"{level.ttft_p50 * 1e3:.0f} ms p95 {level.ttft_p95 * 1e3:.0f} ms, "
                f"{level.truncated} truncated")
        return out


def strato_server(plan: Plan, port: int, logs: Path) -> ServerProcess:
    """strato through its own CLI when installed, else uvicorn on handlers.http:app."""
    env = {"STRATO_THREADS": str(plan.threads), "STRATO_CTX": str(plan.ctx),
           "STRATO_PARALLEL": str(plan.parallel), "STRATO_MODEL": str(plan.model),
           "STRATO_LOG_LEVEL": "WARNING", "STRATO_MAX_QUEUE": "256"}
    cli = Path(sys.executable).with_name("strato")
    if cli.exists():
        argv = [str(cli), "serve", str(plan.model), "--host", "127.0.0.1", "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "uvicorn", "handlers.http:app", "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning"]
    return ServerProcess("strato", argv, f"http://127.0.0.1:{port}/ready",
                         logs / "strato.log", env=env, cwd=ROOT)


def llama_cpp_server(plan: Plan, port: int, logs: Path) -> ServerProcess:
    """llama-cpp-python's own server, with stream interruption off (it defaults to on)."""
    argv = [str(LLAMA_CPP_SERVER_PY), "-m", "llama_cpp.server", "--model", str(plan.model),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(plan.ctx),
            "--n_threads", str(plan.threads), "--n_threads_batch", str(plan.threads),
            "--interrupt_requests", "False"]
    return ServerProcess("llama_cpp.server", argv, f"http://127.0.0.1:{port}/v1/models",
                         logs / "llama_cpp_server.log")


def llama_server(plan: Plan, port: int, logs: Path) -> ServerProcess:
    """llama.cpp's C++ server with `parallel` slots sharing `ctx` cells, as strato does."""
    argv = [str(LLAMA_SERVER_BIN), "-m", str(plan.model), "--host", "127.0.0.1",
            "--port", str(port), "-c", str(plan.ctx), "-np", str(plan.parallel),
            "-t", str(plan.threads), "-tb", str(plan.threads)]
    return ServerProcess("llama-server", argv, f"http://127.0.0.1:{port}/health",
                         logs / "llama_server.log")


def missing_prerequisite(name: str) -> str | None:
    if name == "llama-server" and not LLAMA_SERVER_BIN.exists():
        return f"{LLAMA_SERVER_BIN} missing: run bench/build_llama_server.sh"
    if name == "llama_cpp.server" and not LLAMA_CPP_SERVER_PY.exists():
        return f"{LLAMA_CPP_SERVER_PY} missing: run bench/build_llama_server.sh"
    return None


SERVERS: dict[str, Callable[[Plan, int, Path], ServerProcess]] = {
    "strato": strato_server, "llama_cpp.server": llama_cpp_server, "llama-server": llama_server,
}


def run_system(name: str, plan: Plan, logs: Path) -> SystemResult:
    """Run one column; a failure becomes a note in the table rather than a lost run."""
    if reason := missing_prerequisite(name):
        return SystemResult(name, skipped=reason)
    log(f"== {name}")
    try:
        if name == "direct":
            return run_direct(plan)
        port = free_port()
        with SERVERS[name](plan, port, logs):
            return asyncio.run(bench_http(name, f"http://127.0.0.1:{port}", plan))
    except Exception as exc:  # noqa: BLE001 - reported in the table, the others still run
        log(f"  {name} failed: {exc}")
        return SystemResult(name, skipped=f"failed: {str(exc).splitlines()[0][:120]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 warm-up, 3 single-stream requests, 1 wave per level")
    p.add_argument("--skip", action="append", default=[], choices=SYSTEMS,
                   help="leave a column out (repeatable)")
    p.add_argument("--model", type=Path, help="GGUF path (default: the bundled Gemma 3 270M)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, help="single-stream requests measured (default 10)")
    p.add_argument("--waves", type=int, help="rounds per concurrency level (default 3)")
    p.add_argument("--levels", default="1,4,8,16", help="concurrent streams, comma-separated")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ctx", type=int, default=4096, help="context cells (shared by slots)")
    p.add_argument("--parallel", type=int, default=8, help="sequence slots (strato, llama-server)")
    p.add_argument("--logs", type=Path, default=BUILD / "logs", help="server logs go here")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from core.catalog.bundled import default_model_path

        args.model = default_model_path()
    plan = Plan(model=args.model, max_tokens=args.max_tokens,
                warmup=1 if args.quick else 2,
                requests=args.requests or (3 if args.quick else 10),
                waves=args.waves or (1 if args.quick else 3),
                levels=tuple(int(x) for x in args.levels.split(",") if x.strip()),
                threads=args.threads, ctx=args.ctx, parallel=args.parallel)
    log(f"model {plan.model}, {plan.threads} threads, ctx {plan.ctx}, "
        f"{plan.parallel} slots, {plan.max_tokens} tokens per stream")
    results = {name: run_system(name, plan, args.logs) for name in SYSTEMS
               if name not in args.skip}
    print(render(plan, results))
    if args.json:
        args.json.write_text(json.dumps({"plan": {**asdict(plan), "model": str(plan.model)},
                                         "results": {k: asdict(v) for k, v in results.items()}},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
