"""Helpers shared by the benchmarks: server subprocesses, an SSE client, percentiles.

Every server under test is driven through the same client code, so a difference in the
table comes from the server, not from how it was measured. TTFT is taken at the first
chunk that carries text (not at the HTTP headers, which some servers send before any
work is done), and decode speed excludes the first token so that prompt processing does
not count as decoding.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import httpx


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values.

    Written out rather than imported so the bench has no numpy dependency and the
    definition is visible: p95 of 8 samples interpolates between the two largest.
    """
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class StreamResult:
    """What one streamed completion looked like from the client's side."""

    ttft: float = math.nan            # seconds from send to the first text chunk
    elapsed: float = math.nan         # seconds from send to the end of the stream
    first_to_last: float = math.nan   # seconds from the first to the last text chunk
    tokens: int = 0                   # completion tokens (usage if reported, else chunks)
    chunks: int = 0                   # text-carrying chunks seen
    finish_reason: str | None = None
    text: str = ""
    error: str | None = None

    def decode_tps(self) -> float:
        """Tokens per second after the first one: pure decode speed of this stream."""
        if self.tokens < 2 or not self.first_to_last > 0:
            return math.nan
        return (self.tokens - 1) / self.first_to_last

    def complete(self, max_tokens: int) -> bool:
        """True when the stream produced every token it was asked for."""
        return self.error is None and self.tokens >= max_tokens


@dataclass
class ServerProcess:
    """A server started as a subprocess, waited on until healthy, stopped on exit.

    Its output goes to a log file rather than a pipe: a chatty server writing into a pipe
    nobody drains would block, and the log is what you read when a start fails.
    """

    name: str
    argv: list[str]
    health_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout: float = 300.0
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        env = {**os.environ, **self.env}
        # Own process group, so stopping it also stops any worker it forked.
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.cwd, start_new_session=True)
        log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"it was healthy; last log lines:\n{self.tail()}")
            try:
                if httpx.get(self.health_url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not healthy after {self.start_timeout:.0f} s; "
                           f"last log lines:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass


def _completion_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or ""


def _finish_reason(chunk: dict[str, Any]) -> str | None:
    for choice in chunk.get("choices") or []:
        if choice.get("finish_reason"):
            return str(choice["finish_reason"])
    return None


def _usage_tokens(chunk: dict[str, Any]) -> int | None:
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return usage["completion_tokens"]
    # llama-server reports its own counters under "timings" on the last chunk.
    timings = chunk.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("predicted_n"), int):
        return timings["predicted_n"]
    return None


async def stream_completion(client: httpx.AsyncClient, url: str,
                            body: dict[str, Any]) -> StreamResult:
    """POST an SSE completion and time it: TTFT, first-to-last token, token count.

    The token count prefers the server's own usage figure and falls back to the number of
    text chunks; OpenAI-style servers send one token per chunk except where a token ends
    inside a UTF-8 sequence, which the numeric prompts of the bench never produce.
    """
    result = StreamResult()
    usage: int | None = None
    first = last = math.nan
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url, json={**body, "stream": True}) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode(errors="replace")[:200]
                result.error = f"HTTP {resp.status_code}: {detail}"
                result.elapsed = time.perf_counter() - t0
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"stream error: {chunk['error']}"
                    break
                text = _completion_text(chunk)
                if text:
                    if result.chunks == 0:
                        first = now
                    last = now
                    result.chunks += 1
                    result.text += text
                result.finish_reason = _finish_reason(chunk) or result.finish_reason
                usage = _usage_tokens(chunk) or usage
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    result.elapsed = end - t0
    result.tokens = usage if usage is not None else result.chunks
    if result.chunks:
        result.ttft = first - t0
        result.first_to_last = last - first
    return result


def log(msg: str) -> None:
    """Progress to stderr, so stdout carries only the table (pipe it to a file)."""
    print(msg, file=sys.stderr, flush=True)
