"""`ModelManager`: the ModelService behind every handler.

A request's `model` goes: reference (core.catalog.references) -> Source (core.catalog.resolver: a
manifest, a plain object or a local file) -> tiers.loader (fastest tier that has it, else
the remote, verified) -> a local path -> `LlamaEngine.load` in a thread.

Rules it keeps:
- several models per server; another one is loaded alongside while the memory budget
  allows, else the least recently used *idle* engines are unloaded (core.serving.residency);
  an engine serving a stream is never closed under it;
- loads run one at a time (two cores do not load two models faster than one); requests
  for a model that is loading wait for it, up to `load_timeout`, then get a 503;
- a failed load is reported to whoever waited and logged; the engines already loaded
  keep serving;
- every tier hit, miss, byte and eviction, the load time by source tier and the load
  progress go to core.metrics; each access feeds the promotion policy (core.serving.promotion).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from core import metrics
from core.catalog.references import DigestRef, Reference, RegistryRef
from core.catalog.resolver import Resolver, Source
from core.config import Settings
from core.engine import background_import, build_thread
from core.engine.own_core import OwnCore
from core.engine.protocol import Engine, ModelInfo
from core.errors import ModelUnavailable, OutOfMemory, StratoError
from core.serving.load_timings import LoadTimings
from core.serving.loader_setup import build_loader, describe_tiers
from core.serving.promotion import Promoter
from core.serving.residency import (
    Loaded,
    Resident,
    TrackedEngine,
    footprint,
    memory_budget,
    to_unload,
)
from tiers.base import find_digests
from tiers.errors import SourceUnavailable, StorageError
from tiers.fetch import Progress
from tiers.gate import EarlyBlob
from tiers.gguf_header import GGUFHeader, read_header_file
from tiers.loader import ModelHandle
from tiers.timing import boottime
from tiers.vram import oom_attempts

if TYPE_CHECKING:   # llama_cpp is imported only where a model is loaded
    from core.engine.llama import LlamaEngine, ParkedModel

log = logging.getLogger("strato.models")
T = TypeVar("T")


MAX_PARKED = 2   # parked models hold their vocabulary (tens of MB for a 262k vocab)


@dataclass
class _Parked:
    """A parked llama.cpp model (core.engine.llama.ParkedModel) and the RAM-tier pin that
    keeps its bytes in place while it waits."""

    key: str
    model: ParkedModel
    handle: ModelHandle

    def free(self) -> None:
        """Free the model (unless a load took it) and release the pin."""
        self.model.free()
        self.handle.release()


def _on_build_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`asyncio.to_thread`, on core.engine.build_thread's thread: every llama.cpp build
    runs there (its heap was grown before any fetch), with the caller's context."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return asyncio.get_running_loop().run_in_executor(build_thread.executor(), call)


def _engine_class() -> type[LlamaEngine]:
    from core.engine.llama import LlamaEngine  # llama.cpp only where a model is loaded

    return LlamaEngine


class ModelManager:
    """Implements core.serving.service.ModelService. Create it inside or outside a running loop;
    every async method must then be called on one loop."""

    def __init__(self, settings: Settings, *, budget: int | None = None) -> None:
        self.settings = settings
        background_import.start()   # llama_cpp, beside the set-up and the manifest read
        build_thread.executor()     # its heap grown now, before any fetch (build_thread)
        self.resolver = Resolver(settings)
        self.default_model = self.resolver.default_model()
        self.loader, self.vram = build_loader(settings)
        self.promoter = Promoter(self.loader, settings, prefetch=self._prefetch_bytes)
        self.budget = budget if budget is not None else memory_budget()
        self._entries: dict[str, Loaded] = {}
        self._loading: dict[str, asyncio.Task[Loaded]] = {}
        self._headers: dict[str, ModelInfo] = {}
        self._progress: dict[str, Progress] = {}
        self._errors: dict[str, str] = {}
        self._parked: dict[str, _Parked] = {}     # by digest, oldest first
        self.timings: dict[str, LoadTimings] = {}  # the last load of each model
        self._load_lock: asyncio.Lock | None = None
        self._held_copies: list[threading.Event] = []   # see _load_source
        self._idle: asyncio.Event | None = None
        self._closed = False

    # -- ModelService ---------------------------------------------------------------

    async def engine(self, model: str | None) -> Engine:
        ref, key = self._ref(model)
        entry = self._entries.get(key)
        if entry is None:
            task = self._start(key, ref)
            try:
                entry = await asyncio.wait_for(asyncio.shield(task), self.settings.load_timeout)
            except asyncio.TimeoutError:
                raise ModelUnavailable(
                    f"model {key} is still loading after {self.settings.load_timeout:g}s; "
                    "retry shortly", retry_after=5) from None
        entry.last_used = time.monotonic()
        self.promoter.accessed(key, entry.digest)
        return TrackedEngine(entry, self._went_idle)

    def models(self) -> list[ModelInfo]:
        infos = [e.engine.info for e in list(self._entries.values())]
        infos += [i for k, i in list(self._headers.items()) if k not in self._entries]
        return infos

    def ready(self) -> bool:
        if self.default_model is None:
            return True
        try:
            _, key = self._ref(self.default_model)
        except StratoError:
            return False
        return key in self._entries

    async def prefetch(self, model: str) -> None:
        """Start loading `model` in the background; a bad reference raises at once."""
        ref, key = self._ref(model)
        if key not in self._entries:
            self._start(key, ref)

    def cache_report(self) -> dict[str, Any]:
        # Loader and unload threads change these dicts: iterate over snapshots (list()
        # copies a dict's items atomically under the GIL).
        return {
            "registry": self.resolver.registry.root,
            "tiers": describe_tiers(self.loader),
            "vram": None if self.vram is None else {"free": self.vram.free_bytes(),
                                                    "capacity": self.vram.capacity},
            "loaded": [{"model": e.key, "digest": e.digest, "source": e.source,
                        "tier": e.handle.tier if e.handle else "file",
                        "variant": e.variant,
                        "size": e.engine.info.size_bytes, "load_seconds": round(e.seconds, 3),
                        "active": e.active, "footprint": e.footprint}
                       for e in list(self._entries.values())],
            "loading": [{"model": k, "done": p.done, "total": p.total,
                         "bytes_per_second": round(p.rate), "eta_seconds": p.eta}
                        for k, p in list(self._progress.items()) if k in self._loading],
            "parked": [{"model": p.key, "digest": d} for d, p in list(self._parked.items())],
            "errors": dict(self._errors),
            "policy": self.promoter.report(),
            "memory_budget": self.budget,
        }

    async def close(self) -> None:
        """Stop serving, then finish what the next instance relies on.

        Steps: refuse new loads, wait for loads in progress, close every engine, then
        finish the copies into slower tiers (`Loader.flush`: a disk or EFS copy that
        is still being written behind RAM is completed here, not abandoned; a process
        killed before it ends leaves a resumable partial), then save the promotion
        policy's history, then close the tiers. So when close() returns, a second
        instance on the same disk finds the model there.
        """
        self._closed = True
        if self._loading:
            await asyncio.gather(*self._loading.values(), return_exceptions=True)
        for key in list(self._entries):
            await asyncio.to_thread(self._unload, key)
        await asyncio.to_thread(self._drop_parked)
        await self.finish_copies()
        await asyncio.to_thread(self.promoter.close)
        for tier in self.loader.tiers:
            tier.close()

    async def finish_copies(self, timeout: float | None = None) -> None:
        """Wait for the background copies into slower tiers (none pending: no wait).

        On on-demand Lambda nothing runs between invokes (the environment is frozen),
        so the handler calls this before the invoke that loaded a model returns: the
        EFS copy promised to the next instance is finished inside that invoke."""
        for held in self._held_copies:
            held.set()
        self._held_copies.clear()
        await asyncio.to_thread(self.loader.flush, timeout)

    # -- loading --------------------------------------------------------------------

    def _ref(self, model: str | None) -> tuple[Reference, str]:
        """A caller's `model` under the request policy (registry names, the default,
        listed sources); None means the default, which the operator chose."""
        if model:
            ref = self.resolver.parse_request(model)
        elif self.default_model:
            ref = self.resolver.parse(self.default_model)
        else:
            raise ModelUnavailable("no model configured: name one in the request's "
                                   "`model` field or set STRATO_MODEL")
        return ref, str(ref)

    def _start(self, key: str, ref: Reference) -> asyncio.Task[Loaded]:
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key, ref))
            self._loading[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        return task

    def _finished(self, key: str, task: asyncio.Task[Loaded]) -> None:
        self._loading.pop(key, None)
        self._progress.pop(key, None)
        for gauge in (metrics.load_progress_bytes, metrics.load_throughput_bytes):
            try:
                gauge.remove(key)
            except KeyError:
                pass
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._errors.pop(key, None)
        else:
            self._headers.pop(key, None)
            self._errors[key] = str(exc)
            log.error("loading %s failed: %s", key, exc)

    async def _load(self, key: str, ref: Reference) -> Loaded:
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            if key in self._entries:
                return self._entries[key]
            if self._closed:
                raise ModelUnavailable("the server is shutting down")
            start = time.monotonic()
            timings = LoadTimings(key)
            with timings.timed("manifest"):
                source = await asyncio.to_thread(self._resolve, ref)
            try:
                entry = await self._load_source(key, source, timings)
            except OutOfMemory as exc:
                entry = await self._load_smaller_variant(key, source, exc)
            if self._closed:
                entry.engine.close()
                if entry.handle is not None:
                    entry.handle.release()
                raise ModelUnavailable("the server is shutting down")
            entry.seconds = time.monotonic() - start
            metrics.load_seconds.labels(tier=entry.source).observe(entry.seconds)
            timings.source = entry.source
            timings.take_process_phases()
            timings.log()
            timings.observe()
            self.timings[key] = timings
            self._entries[key] = entry
            log.info("serving %s (%d bytes from %s) after %.2fs", key,
                     entry.engine.info.size_bytes, entry.source, entry.seconds)
            return entry

    async def _load_source(self, key: str, source: Source,
                           timings: LoadTimings | None = None) -> Loaded:
        """Bytes through the tiers (or a local file in place), room in memory, then the
        engine with its GPU-layer fallbacks. A blob streaming into the RAM tier gets its
        engine built during the fetch (`_fetch_and_build`). The tier handle is released
        on failure."""
        timings = timings or LoadTimings(key)
        # The copies into slower tiers wait until the engine's first request has ended
        # (or the load failed, or finish_copies): on a small function they would take
        # the CPU, memory bandwidth and page cache that the fetch, the build and the
        # first answer need.
        copies_after = threading.Event()
        self._held_copies = [e for e in self._held_copies if not e.is_set()] + [copies_after]
        try:
            loaded = await self._fetch_then_load(key, source, timings, copies_after)
        except BaseException:
            copies_after.set()
            raise
        loaded.copies_after = copies_after
        return loaded

    async def _fetch_then_load(self, key: str, source: Source, timings: LoadTimings,
                               copies_after: threading.Event) -> Loaded:
        handle, engine, need = None, None, 0
        if source.plan is not None:
            if self._parked and (source.digest is None
                                 or self.loader.locate(source.digest) is None):
                # A fetch may need tier space that parked models pin: give it all back.
                await asyncio.to_thread(self._drop_parked)
            handle, engine, need = await self._fetch_and_build(key, source, timings,
                                                               copies_after)
            if engine is not None:        # built early: its header may still be parsing
                return Loaded(key, engine, handle, handle.digest, handle.source, 0.0, need)
            path, tier, size = handle.path, handle.source, handle.size
            n_layers = handle.header.block_count or 0
        else:
            assert source.path is not None
            path, tier, size = source.path, "file", os.path.getsize(source.path)
            header = await asyncio.to_thread(read_header_file, path)
            n_layers = header.block_count or 0
        try:
            need = footprint(size, self.settings.ctx, n_layers,
                             in_ram_tier=self._in_ram_tier(handle))
            await self._make_room(key, need)
            parked = self._parked.pop(handle.digest, None) if handle is not None else None
            try:
                with timings.timed("llama_load"):
                    engine = await _on_build_thread(self._load_engine, key, path, source,
                                                    handle, parked)
            finally:
                if parked is not None:
                    await asyncio.to_thread(parked.free)
        except BaseException:
            if handle is not None:
                handle.release()
            raise
        return Loaded(key, engine, handle, handle.digest if handle else None, tier, 0.0,
                      need)

    async def _fetch_and_build(self, key: str, source: Source, timings: LoadTimings,
                               copies_after: threading.Event
                               ) -> tuple[ModelHandle, LlamaEngine | None, int]:
        """The loader's fetch, and beside it the llama.cpp build when the blob streams
        into the RAM tier: (handle, engine or None, footprint).

        The loader offers the blob once its header is verified (tiers.gate.EarlyBlob);
        llama.cpp then builds the vocabulary, metadata and tensor table while the tensor
        bytes stream, and waits at the blob's gate before it reads any of them. When the
        fetch fails, the gate fails, llama.cpp abandons the build, and the fetch's error
        is what the caller sees. A tier hit, or a fetch that fails before its header,
        has no early build: the engine is then loaded by the caller as before.
        """
        assert source.plan is not None
        size = source.plan.size or 0         # a manifest's plan has it: the blob's
        if source.manifest is not None:
            # Listed while it loads from the start: a cold start's own parse of the
            # header waits for the first answer (Loader.load) and calls no on_header.
            gguf = source.manifest.gguf
            self._describe(key, gguf.architecture, gguf.context_length, gguf.file_type,
                           size_bytes=size)
        loop = asyncio.get_running_loop()
        offered: asyncio.Future[EarlyBlob] = loop.create_future()

        def offer(blob: EarlyBlob) -> None:
            if offered.done():           # the load went on without it
                blob.close()
            else:
                offered.set_result(blob)

        def on_early(blob: EarlyBlob) -> None:
            loop.call_soon_threadsafe(offer, blob)

        fetch = asyncio.ensure_future(asyncio.to_thread(
            self.loader.load, source.plan,
            on_header=lambda h: self._header(key, h, size),
            on_progress=lambda p: self._on_progress(key, p), on_early=on_early,
            copies_after=copies_after, bulk_after=background_import.done))
        either: list[asyncio.Future[Any]] = [fetch, offered]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not offered.done():
            offered.cancel()
            handle = await fetch
            timings.add_fetch(handle.fetch)
            return handle, None, 0
        blob = offered.result()
        build: asyncio.Future[LlamaEngine] | None = None
        try:
            n_layers = (blob.header.block_count if blob.header is not None else
                        source.manifest.gguf.block_count if source.manifest else 0)
            need = footprint(blob.size, self.settings.ctx, n_layers or 0, in_ram_tier=True)
            await self._make_room(key, need)
            build = asyncio.ensure_future(_on_build_thread(self._build_early, key, blob,
                                                           source, timings))
            fetched, built = await asyncio.gather(fetch, build, return_exceptions=True)
        finally:
            if build is None or build.done():
                blob.close()
            else:          # cancelled: close the descriptor only once llama.cpp is done
                build.add_done_callback(lambda _: blob.close())
            if build is None:
                done = (await asyncio.gather(fetch, return_exceptions=True))[0]
                if isinstance(done, ModelHandle):
                    done.release()
        if isinstance(fetched, BaseException):
            if not isinstance(built, BaseException):
                await asyncio.to_thread(built.close)
            raise fetched
        timings.add_fetch(fetched.fetch)
        if isinstance(built, BaseException):
            fetched.release()
            raise built
        built.path = fetched.path        # the tier's descriptor: what a later load names
        return fetched, built, need

    def _build_early(self, key: str, blob: EarlyBlob, source: Source,
                     timings: LoadTimings) -> LlamaEngine:
        """Loader-side thread: the engine over a blob still streaming into the RAM tier,
        held at its gate (the wait is its own phase in the timings)."""
        start = boottime()

        def hold() -> bool:
            waited = boottime()
            try:
                return blob.gate.wait()
            finally:
                timings.add("gate_wait", waited)

        try:
            return self._load_engine(key, blob.path, source, None, None, hold=hold,
                                     header=blob.header, size=blob.size)
        except BaseException:
            if blob.gate.error is not None:
                raise blob.gate.error from None
            raise
        finally:
            timings.add("llama_load", start)

    async def _load_smaller_variant(self, key: str, source: Source,
                                    exc: OutOfMemory) -> Loaded:
        """After `source` ran out of memory at every GPU-layer count: each smaller
        variant its manifest lists, largest first, pinned by digest; the first that
        loads serves `key` (logged, and named in /v1/cache). None left: the OOM."""
        variants = [v for v in source.manifest.variants
                    if v.size < source.manifest.size] if source.manifest else []
        await asyncio.to_thread(self._drop_parked)   # their memory is the variants' now
        tried = [key]
        for variant in variants:
            ref = (DigestRef(source.manifest.name, variant.digest.split(":", 1)[1])
                   if variant.digest else RegistryRef(source.manifest.name, variant.tag))
            log.warning("%s does not fit in memory (%s); trying its smaller variant %s",
                        tried[-1], exc, variant.tag)
            tried.append(f"{source.manifest.name}:{variant.tag}")
            try:
                smaller = await asyncio.to_thread(self._resolve, ref)
                entry = await self._load_source(key, smaller)
            except OutOfMemory as again:
                exc = again
                continue
            entry.variant = variant.tag
            return entry
        if len(tried) == 1:
            raise exc
        raise OutOfMemory(f"none of {', '.join(tried)} fits in memory; last: {exc}") from exc

    def _resolve(self, ref: Reference) -> Source:
        """Resolve, preferring what the local tiers already hold (no registry read)."""
        if isinstance(ref, DigestRef) and self.loader.locate(ref.hex) is not None:
            return self.resolver.local_plan(ref, ref.hex)
        try:
            return self.resolver.resolve(ref)
        except SourceUnavailable as exc:
            digest = self._cached_digest(ref) if isinstance(ref, RegistryRef) else None
            if digest is None:
                raise
            log.warning("registry unreachable (%s); serving the cached copy of %s", exc, ref)
            return self.resolver.local_plan(ref, digest)

    def _cached_digest(self, ref: RegistryRef) -> str | None:
        return next(iter(find_digests(self.loader.tiers, names=(str(ref),))), None)

    def _prefetch_bytes(self, key: str) -> None:
        """Promoter thread: bring a likely-next model's bytes into the tiers, no engine."""
        if key in self._entries or key in self._loading or self._closed:
            return
        source = self._resolve(self.resolver.parse(key))
        if source.plan is not None:
            self.loader.load(source.plan).release()

    def _load_engine(self, key: str, path: str, source: Source,
                     handle: ModelHandle | None, parked: _Parked | None, *,
                     hold: Any = None, header: GGUFHeader | None = None,
                     size: int = 0) -> LlamaEngine:
        """LlamaEngine.load with the planned GPU layers; on a GPU, a load that runs out
        of memory is retried with fewer layers (tiers.vram.oom_attempts) before giving
        up. Any other failure (a corrupt file) is final: fewer layers would not help.

        Failures that are not typed already become ModelUnavailable (503), so a
        model llama.cpp cannot load never turns into a 500.
        """
        if handle is not None:
            header, size = handle.header, handle.size
        attempts = self._gpu_attempts(source, header, size)
        # Alone (nothing else loaded, so no decode needs every CPU), the build gets a CPU
        # to itself while it builds the vocabulary and metadata (core.engine.own_core);
        # the tensors' mapping, which faults in the blob's pages as the fetch does, and
        # whatever follows share them all.
        core = OwnCore(enabled=not self._entries)
        held: dict[str, Callable[[], Any]] = {"on_tensors": core.release}
        if hold is not None:
            def release_then_hold() -> bool:
                core.release()
                return bool(hold())
            held["hold"] = release_then_hold
        metrics.import_in_background()    # while llama.cpp builds without the GIL
        with core:
            for i, n_gpu_layers in enumerate(attempts):
                try:
                    return _engine_class().load(path, name=key, settings=self.settings,
                                                n_gpu_layers=n_gpu_layers,
                                                parked=parked.model if parked else None, **held)
                except OutOfMemory as exc:
                    if i + 1 == len(attempts):
                        raise
                    log.warning("loading %s with %d GPU layers ran out of memory (%s); "
                                "retrying with %d", key, n_gpu_layers, exc, attempts[i + 1])
                except (StratoError, StorageError):
                    raise
                except Exception as exc:  # typed for the client below
                    raise ModelUnavailable(f"could not load {key}: {exc}") from exc
        raise AssertionError("unreachable: at least one attempt is made")

    def _gpu_attempts(self, source: Source, header: GGUFHeader | None,
                      size: int) -> list[int]:
        """n_gpu_layers to try in order: the setting, or a placement and its fallbacks."""
        if self.settings.n_gpu_layers is not None:
            return [self.settings.n_gpu_layers]
        if self.vram is None:
            return [0]
        if source.manifest is not None:
            layer_bytes = source.manifest.gguf.layer_bytes()
            other = source.manifest.gguf.other_bytes()
        elif header is not None:
            layer_bytes = header.layer_bytes()
            other = max(0, size - header.data_offset - sum(layer_bytes))
        else:
            return [0]
        first = self.vram.place(layer_bytes, other)
        return oom_attempts(first, len(layer_bytes))

    def _header(self, key: str, header: GGUFHeader, size_bytes: int) -> None:
        """Runs on the loader thread: /v1/models can describe the model from here on."""
        self._describe(key, header.architecture, header.context_length, header.file_type,
                       header.chat_template, size_bytes=size_bytes)

    def _describe(self, key: str, architecture: str, context_length: int | None,
                  file_type: str | None, chat_template: str | None = None, *,
                  size_bytes: int) -> None:
        """/v1/models's entry for a model still loading (the engine's replaces it): its
        size is the blob's, as the engine's will be, not 0 until the load ends."""
        self._headers[key] = ModelInfo(
            name=key, architecture=architecture,
            n_ctx=min(self.settings.ctx, context_length or self.settings.ctx),
            n_ctx_train=context_length or 0, chat_template=chat_template,
            file_type=file_type, size_bytes=size_bytes)

    def _on_progress(self, key: str, p: Progress) -> None:
        previous = self._progress.get(key)
        self._progress[key] = p
        metrics.later(lambda c: (c.load_progress_bytes.labels(model=key).set(p.done),
                                 c.load_throughput_bytes.labels(model=key).set(p.rate)))
        if previous is None or p.seconds - previous.seconds >= 2 or p.done == p.total:
            log.info("loading %s: %.0f/%.0f MB, %.1f MB/s, eta %s", key, p.done / 1e6,
                     p.total / 1e6, p.rate / 1e6,
                     f"{p.eta:.1f}s" if p.eta is not None else "?")

    # -- residency ------------------------------------------------------------------

    async def _make_room(self, key: str, need: int) -> None:
        deadline = time.monotonic() + self.settings.load_timeout
        while True:
            residents = [Resident(k, e.footprint, e.last_used,
                                  e.active > 0 or e.engine.queue_depth() > 0)
                         for k, e in self._entries.items()]
            victims = to_unload(residents, need, self.budget)
            if victims is not None:
                # Taken out of `_entries` here, on the loop, before any await: a request
                # arriving while a victim's engine closes in a thread must start a new
                # load, never be handed the engine being closed.
                leaving = [(v, self._take(v)) for v in victims]
                for victim, entry in leaving:
                    log.info("unloading %s to make room for %s", victim, key)
                    await asyncio.to_thread(self._close_entry, entry, park=True)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelUnavailable(f"cannot load {key}: every loaded model is busy and "
                                       "memory allows no more", retry_after=5)
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass

    def _went_idle(self) -> None:
        if self._idle is not None:
            self._idle.set()

    def _take(self, key: str) -> Loaded | None:
        """Remove `key` from what is served (call on the loop): from here on a request
        for it starts a new load."""
        self._headers.pop(key, None)
        return self._entries.pop(key, None)

    def _unload(self, key: str, *, park: bool = False) -> None:
        self._close_entry(self._take(key), park=park)

    def _close_entry(self, entry: Loaded | None, *, park: bool = False) -> None:
        """Close an engine no longer served. With `park`, a model whose bytes are in the
        RAM tier keeps its llama.cpp model (and its tier pin) for a quick return: a swap
        back then costs a context, not a reload (see core.engine.llama.ParkedModel)."""
        if entry is None:
            return
        parked = entry.engine.close(park=park and self._in_ram_tier(entry.handle))
        if parked is None:
            if entry.handle is not None:
                entry.handle.release()
            return
        assert entry.digest is not None and entry.handle is not None
        self._parked[entry.digest] = _Parked(entry.key, parked, entry.handle)
        while len(self._parked) > MAX_PARKED:
            self._parked.pop(next(iter(self._parked))).free()

    def _in_ram_tier(self, handle: ModelHandle | None) -> bool:
        """Are these bytes in the RAM tier (so an engine over them maps the tier's
        memory instead of adding its own)?"""
        return handle is not None and any(t.name == handle.tier and t.kind == "ram"
                                          for t in self.loader.tiers)

    def _drop_parked(self) -> None:
        while self._parked:
            self._parked.popitem()[1].free()
