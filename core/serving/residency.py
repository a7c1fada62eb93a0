"""Which loaded models stay resident when another one must load.

Two parts: `TrackedEngine` counts the requests each loaded engine is serving, and
`to_unload` (pure) picks what to unload from those counts, footprints and recency.

"One loaded at a time unless memory allows more": a server keeps several engines when
their footprints fit the memory budget, and otherwise unloads the least recently used
idle ones. A model that is serving a request is never unloaded (closing an engine ends
its streams, and strato never interrupts a running stream); when only busy models stand
in the way, the new load waits for one to go idle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.engine.protocol import GenerationRequest, ModelInfo, TokenEvent
from tiers.loader import ModelHandle

if TYPE_CHECKING:   # llama_cpp is imported only where a model is loaded
    from core.engine.llama import LlamaEngine

KV_BYTES_PER_TOKEN_PER_LAYER = 4096   # f16 K+V at ~1k hidden: an overestimate for small models
OVERHEAD = 96 << 20                   # compute buffers, scheduler, tokenizer tables


@dataclass(frozen=True)
class Resident:
    key: str
    footprint: int      # bytes the engine adds beyond what the RAM tier holds
    last_used: float
    busy: bool


def footprint(model_bytes: int, n_ctx: int, n_layers: int, *, in_ram_tier: bool) -> int:
    """Estimated bytes one engine adds to the process: KV cache, buffers, and weights.

    llama.cpp maps the weights from the file it is given. A model served from the RAM
    tier maps the tier's memfd, so its weights are already counted in the tier's
    capacity and add nothing here (which is what lets two models in RAM both stay
    loaded). Weights mapped from a disk or local file become page cache: counted, so
    several large models do not thrash it.
    """
    kv = n_ctx * max(n_layers, 1) * KV_BYTES_PER_TOKEN_PER_LAYER
    return (0 if in_ram_tier else model_bytes) + kv + OVERHEAD


def to_unload(resident: Sequence[Resident], need: int, budget: int) -> list[str] | None:
    """Keys to unload (LRU first) so `need` more bytes fit in `budget`.

    [] when it fits already; None when even unloading every idle model is not enough
    (the caller waits for busy ones to finish, then asks again). With nothing resident
    a model always "fits": refusing the only model a server has would serve nothing,
    so a too-large model is tried and fails in llama.cpp with a clear error instead.
    """
    used = sum(r.footprint for r in resident)
    if used + need <= budget or not resident:
        return []
    out: list[str] = []
    for r in sorted((r for r in resident if not r.busy), key=lambda r: r.last_used):
        out.append(r.key)
        used -= r.footprint
        if used + need <= budget or used == 0:
            return out
    return None


def memory_budget(fraction: float = 0.8) -> int:
    """Bytes the engines may use: a fraction of the container's memory limit.

    The cgroup limit comes first (Lambda, Cloud Run and Kubernetes set it and the host's
    MemTotal means nothing there), then MemTotal.
    """
    limit = _cgroup_limit()
    total = _meminfo_total()
    candidates = [v for v in (limit, total) if v]
    return int(min(candidates) * fraction) if candidates else 8 << 30


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(eq=False)
class Loaded:
    """One loaded engine and what keeps its bytes in place."""

    key: str
    engine: LlamaEngine
    handle: ModelHandle | None
    digest: str | None
    source: str            # tier the bytes came from ("remote", "ram", "disk:...", "file")
    seconds: float
    footprint: int
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0
    variant: str | None = None   # the smaller variant's tag serving `key` after an OOM
    # Set when the engine's first request ends: the copies into slower tiers that its
    # load started wait for that, so they do not slow the cold start's first answer.
    copies_after: threading.Event | None = None


class TrackedEngine:
    """The Engine a handler gets: the loaded engine, counting requests in flight.

    The count is what makes "never unload a model in use" enforceable; everything
    else passes straight through.
    """

    def __init__(self, entry: Loaded, on_idle: Callable[[], None]) -> None:
        self._entry = entry
        self._engine = entry.engine
        self._on_idle = on_idle
        self.info: ModelInfo = entry.engine.info

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self._engine.tokenize(text, add_bos)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._engine.detokenize(tokens)

    def render_chat(self, messages: Sequence[dict[str, Any]], tools: Sequence[Any] = ()) -> str:
        return self._engine.render_chat(messages, tools)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        self._enter()
        inner = self._engine.generate(request)
        try:
            async for event in inner:
                yield event
        finally:
            await inner.aclose()
            self._exit()

    async def embed(self, inputs: Sequence[str]) -> tuple[list[list[float]], int]:
        self._enter()
        try:
            return await self._engine.embed(inputs)
        finally:
            self._exit()

    def queue_depth(self) -> int:
        return self._engine.queue_depth()

    def close(self) -> None:
        """Handlers do not own engines: closing is the manager's job."""

    def _enter(self) -> None:
        self._entry.active += 1
        self._entry.last_used = time.monotonic()

    def _exit(self) -> None:
        self._entry.active -= 1
        self._entry.last_used = time.monotonic()
        if self._entry.active == 0:
            if self._entry.copies_after is not None:
                self._entry.copies_after.set()
            self._on_idle()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)
