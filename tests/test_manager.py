"""ModelManager with the real model, real tiers (memfd RAM, a disk directory) and a real
directory registry: loads from the remote then from tiers, waits during loads, refuses
and survives bad models, swaps without the remote, never unloads a model in use, and
serves the bundled Gemma by default through the registry."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import threading
from pathlib import Path

import pytest

from core import metrics
from core.catalog.references import parse_name_tag
from core.catalog.registry import Registry
from core.config import Settings
from core.engine.protocol import GenerationRequest, SamplingParams
from core.errors import InvalidReference, ModelNotFound, ModelUnavailable, OutOfMemory, status_of
from core.serving.manager import ModelManager
from core.serving.residency import Resident, footprint, to_unload
from tests.polling import async_wait_until
from tiers.errors import IntegrityError, SourceUnavailable

GREEDY = SamplingParams(temperature=0.0, seed=1)


def settings(tmp_path: Path, **kw) -> Settings:
    base = Settings(registry=str(tmp_path / "registry"),
                    tiers=f"ram:1GiB,disk:{tmp_path / 'disk'}:2GiB",
                    ctx=256, parallel=2, threads=2, chunk=8 << 20, streams=8,
                    load_timeout=300)
    return dataclasses.replace(base, **kw)


def variant_of(gemma: Path, dest: Path, letter: bytes) -> Path:
    """A second, distinct, loadable model: Gemma with one byte of its name changed."""
    data = bytearray(gemma.read_bytes())
    key = data.index(b"general.name")
    # key string, then u32 type (8 = string), u64 length, then the value's bytes
    value_at = key + len(b"general.name") + 4 + 8
    data[value_at] = letter[0]
    dest.write_bytes(bytes(data))
    return dest


async def first_tokens(engine, n: int = 4) -> str:
    text = ""
    async for event in engine.generate(GenerationRequest("The sky is", n, GREEDY)):
        text += event.text
    return text


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, gemma_path):
    """A registry holding Gemma as gemma3:270m and a distinct variant as other:v1."""
    root = tmp_path_factory.mktemp("shared")
    registry = Registry(str(root / "registry"))
    registry.push(str(gemma_path), parse_name_tag("gemma3:270m"))
    variant = variant_of(gemma_path, root / "variant.gguf", b"X")
    registry.push(str(variant), parse_name_tag("other:v1"))
    return root / "registry"


def test_unload_decisions_are_lru_and_spare_busy_models():
    rs = [Resident("a", 100, 1.0, False), Resident("b", 100, 2.0, False),
          Resident("c", 100, 0.5, True)]
    assert to_unload(rs, 50, 400) == []
    assert to_unload(rs, 150, 400) == ["a"]
    assert to_unload(rs, 250, 400) == ["a", "b"]
    assert to_unload(rs, 350, 400) is None           # only busy "c" would be left to go
    assert to_unload([], 10_000, 1) == []            # the only model is always tried
    # Weights in the RAM tier are the tier's bytes: an engine over them adds KV only.
    assert footprint(10 << 30, 256, 18, in_ram_tier=True) < \
        footprint(10 << 30, 256, 18, in_ram_tier=False) - (10 << 30) + (1 << 20)


def test_cold_load_then_tier_hits_across_processes(tmp_path, pushed, gemma_path):
    async def main():
        s = settings(tmp_path, registry=str(pushed))
        first = ModelManager(s)
        try:
            engine = await first.engine("gemma3:270m")
            assert engine.info.name == "gemma3:270m"
            assert await first_tokens(engine)
            await first.finish_copies()      # the disk copy runs behind RAM: wait for it
            report = first.cache_report()
            (loaded,) = report["loaded"]
            assert loaded["source"] == "remote" and loaded["tier"] == "ram"
            by_name = {t["kind"]: t for t in report["tiers"]}
            assert by_name["ram"]["misses"] == 1 and by_name["disk"]["misses"] == 1
            assert by_name["disk"]["bytes_written"] == gemma_path.stat().st_size
            assert [e["size"] for e in by_name["disk"]["entries"]] == \
                [gemma_path.stat().st_size]
            assert first.default_model is None and first.ready()  # a registry: no default
            text = metrics.render().decode()
            assert 'strato_tier_misses_total{tier="ram"}' in text
            assert 'strato_load_seconds_count{tier="remote"}' in text
            assert f'strato_tier_bytes_total{{tier="disk:{tmp_path / "disk"}"}}' in text
        finally:
            await first.close()              # finishes the tier copies (ModelManager.close)
        # A new process on the same disk directory: a disk hit, the blobs are not read
        # (they are moved away; the manifests stay).
        blobs, away = pushed / "blobs", pushed.with_name("blobs-away")
        os.rename(blobs, away)
        second = ModelManager(s)
        try:
            engine = await second.engine("gemma3:270m")
            assert await first_tokens(engine)
            assert second.cache_report()["loaded"][0]["source"].startswith("disk:")
        finally:
            await second.close()
            os.rename(away, blobs)

    asyncio.run(main())


def test_requests_during_a_load_wait_and_share_one_fetch(tmp_path, pushed):
    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed)))
        try:
            engines = await asyncio.gather(*(manager.engine("gemma3:270m") for _ in range(3)))
            assert len({id(e._engine) for e in engines}) == 1
            ram = next(t for t in manager.cache_report()["tiers"] if t["kind"] == "ram")
            assert ram["misses"] == 1 and ram["bytes_written"] > 0
            outs = await asyncio.gather(*(first_tokens(e) for e in engines))
            assert len(set(outs)) == 1      # greedy, same prompt: same answer
        finally:
            await manager.close()

    asyncio.run(main())


def test_bad_references_and_unknown_models_leave_the_server_serving(tmp_path, pushed):
    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed)))
        try:
            await manager.engine("gemma3:270m")
            with pytest.raises(ModelNotFound) as info:
                await manager.engine("gemma3:9000b")
            assert status_of(info.value)[0] == 404 and "gemma3:9000b" in str(info.value)
            with pytest.raises(InvalidReference):
                await manager.engine("../../etc/passwd")
            with pytest.raises(InvalidReference):     # paths are not the caller's to name
                await manager.engine(str(tmp_path / "missing.gguf"))
            assert "gemma3:9000b" in manager.cache_report()["errors"]
            assert await first_tokens(await manager.engine("gemma3:270m"))
        finally:
            await manager.close()

    asyncio.run(main())


def test_a_corrupted_blob_is_never_served(tmp_path, gemma_path):
    registry = Registry(str(tmp_path / "registry"))
    m = registry.push(str(gemma_path), parse_name_tag("bad:1")).manifest
    blob = Path(registry.root) / m.blob_key
    with open(blob, "r+b") as f:
        f.seek(m.size // 2)
        byte = f.read(1)
        f.seek(m.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))

    async def main():
        manager = ModelManager(settings(tmp_path))
        try:
            with pytest.raises(IntegrityError) as info:
                await manager.engine("bad:1")
            assert status_of(info.value)[0] == 503
            report = manager.cache_report()
            assert all(t["entries"] == [] for t in report["tiers"])
            assert report["loaded"] == []
        finally:
            await manager.close()

    asyncio.run(main())


def test_swap_between_two_models_in_ram_never_touches_the_remote(tmp_path, pushed,
                                                                   monkeypatch):
    import core.engine.llama

    files_loaded = []
    load_file = core.engine.llama.ll.llama_model_load_from_file
    monkeypatch.setattr(core.engine.llama.ll, "llama_model_load_from_file",
                        lambda path, params: files_loaded.append(path) or
                        load_file(path, params))

    async def main():
        s = settings(tmp_path, registry=str(pushed), tiers="ram:1GiB")
        manager = ModelManager(s, budget=1)     # room for one engine at a time
        try:
            a = await manager.engine("gemma3:270m")
            answer_a = await first_tokens(a)
            b = await manager.engine("other:v1")
            assert await first_tokens(b)
            report = manager.cache_report()
            assert [e["model"] for e in report["loaded"]] == ["other:v1"]
            assert [p["model"] for p in report["parked"]] == ["gemma3:270m"]
            assert len(files_loaded) == 2
            # The registry disappears: both models must now come from the RAM tier.
            moved = pushed.with_name("moved-away")
            os.rename(pushed, moved)
            try:
                again = await manager.engine("gemma3:270m")
                assert await first_tokens(again) == answer_a
                report = manager.cache_report()
                assert report["loaded"][0]["source"] == "ram"
                ram = report["tiers"][0]
                assert ram["hits"] == 1 and ram["misses"] == 2
                # The parked model was taken: a new context, no second parse of the file.
                assert len(files_loaded) == 2
                assert [p["model"] for p in report["parked"]] == ["other:v1"]
            finally:
                os.rename(moved, pushed)
        finally:
            await manager.close()
        assert manager.cache_report()["parked"] == []

    asyncio.run(main())


def test_a_model_in_use_is_not_unloaded(tmp_path, pushed):
    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed), tiers="ram:1GiB"),
                               budget=1)
        try:
            a = await manager.engine("gemma3:270m")
            stream = a.generate(GenerationRequest("Count:", 64, GREEDY))
            await stream.__anext__()     # A is serving a stream until it is drained
            waiting = asyncio.ensure_future(manager.engine("other:v1"))
            done, _ = await asyncio.wait([waiting], timeout=10)
            assert not done              # B waits: A is busy and memory allows one
            assert [e["model"] for e in manager.cache_report()["loaded"]] == ["gemma3:270m"]
            rest = [e async for e in stream]          # the stream was not interrupted
            assert rest[-1].finish_reason in ("length", "stop")
            assert rest[-1].completion_tokens == 64 or rest[-1].finish_reason == "stop"
            b = await waiting                         # A went idle: it made room for B
            assert await first_tokens(b)
            assert [e["model"] for e in manager.cache_report()["loaded"]] == ["other:v1"]
        finally:
            await manager.close()

    asyncio.run(main())


def test_a_model_being_unloaded_is_never_handed_out(tmp_path, pushed):
    """While _make_room unloads A in a worker thread, a request for A must not be handed
    A's engine (it was, while the unload waited for a worker, and then answered 400
    "model is closed"); it waits for a new load of A instead.

    The unload is made to wait for a worker the way a busy server makes it wait: the
    loop's executor is one thread, held by a gate until the request for A was made."""
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed), tiers="ram:1GiB"),
                               budget=1)
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        real_make_room = manager._make_room
        probes: list[asyncio.Task] = []

        async def make_room(key, need):
            if key != "other:v1" or probes:          # only the swap to B is observed
                return await real_make_room(key, need)
            gate = threading.Event()
            held = loop.run_in_executor(None, gate.wait)     # the only worker, busy
            room = asyncio.ensure_future(real_make_room(key, need))
            await asyncio.sleep(0)       # make_room runs up to its unload, which waits
            probes.append(asyncio.ensure_future(manager.engine("gemma3:270m")))
            await asyncio.sleep(0)       # one step: an engine handed out is done now
            gate.set()
            await held
            await room

        manager._make_room = make_room
        try:
            a = await manager.engine("gemma3:270m")
            doomed = a._entry.engine
            b = await manager.engine("other:v1")     # no room for two: A is unloaded
            assert b.info.name == "other:v1"
            (probe,) = probes
            assert not probe.done() or probe.result()._entry.engine is not doomed
            again = await probe                      # A again, from a new load
            assert again._entry.engine is not doomed and await first_tokens(again)
        finally:
            await manager.close()

    asyncio.run(main())


@pytest.mark.parametrize("tiers", ["ram+disk", "disk"])
def test_a_model_still_loading_is_listed_from_its_manifest(tmp_path, pushed, gemma_path,
                                                          tiers):
    """/v1/models lists a cold model from the moment its manifest is read, before the
    engine exists: the manifest's GGUF summary, and the blob's size (not 0). Without a
    RAM tier (no early build) the loader's header parse may describe it again, with the
    same size."""
    async def main():
        only_disk = {"tiers": f"disk:{tmp_path / 'disk'}:2GiB"} if tiers == "disk" else {}
        manager = ModelManager(settings(tmp_path, registry=str(pushed), **only_disk))
        listed: list[list] = []
        real_make_room = manager._make_room

        async def make_room(key, need):   # the engine is built after this returns
            listed.append(manager.models())
            await real_make_room(key, need)

        manager._make_room = make_room
        try:
            engine = await manager.engine("gemma3:270m")
            (loading,) = listed[0]
            assert (loading.name, loading.architecture, loading.file_type) == \
                ("gemma3:270m", "gemma3", "Q4_K_M")
            assert loading.n_ctx_train == engine.info.n_ctx_train
            assert loading.size_bytes == gemma_path.stat().st_size == engine.info.size_bytes
        finally:
            await manager.close()

    asyncio.run(main())


def test_load_timeout_answers_503_while_the_load_goes_on(tmp_path, pushed):
    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed), load_timeout=0.001))
        try:
            with pytest.raises(ModelUnavailable, match="still loading") as info:
                await manager.engine("gemma3:270m")
            assert status_of(info.value)[0] == 503 and info.value.retry_after
            await manager.prefetch("gemma3:270m")
            assert await async_wait_until(lambda: not manager._loading, 600)
            assert await first_tokens(await manager.engine("gemma3:270m"))
        finally:
            await manager.close()

    asyncio.run(main())


def test_local_file_and_prefetch_and_ready(tmp_path, gemma_path):
    async def main():
        manager = ModelManager(settings(tmp_path, model=str(gemma_path)))
        try:
            assert manager.default_model == str(gemma_path) and not manager.ready()
            with pytest.raises(InvalidReference):
                await manager.prefetch("s3://bucket")
            await manager.prefetch(str(gemma_path))
            assert manager._loading
            assert await async_wait_until(manager.ready, 600)
            (loaded,) = manager.cache_report()["loaded"]
            assert loaded["source"] == "file" and loaded["tier"] == "file"
            assert [m.name for m in manager.models()] == [str(gemma_path)]
            assert await first_tokens(await manager.engine(None))
        finally:
            await manager.close()

    asyncio.run(main())


def test_default_serves_bundled_gemma_through_a_local_registry(tmp_path, gemma_path,
                                                               monkeypatch):
    cache = tmp_path / "cache"
    (cache / "strato" / "models").mkdir(parents=True)
    os.symlink(gemma_path, cache / "strato" / "models" / gemma_path.name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))

    async def main():
        manager = ModelManager(Settings(ctx=256, parallel=2, threads=2,
                                        tiers=f"ram:1GiB,disk:{tmp_path / 'disk'}:1GiB"))
        try:
            assert manager.default_model == "gemma3:270m"
            engine = await manager.engine(None)
            assert engine.info.name == "gemma3:270m" and manager.ready()
            assert await first_tokens(engine)
            manifest = cache / "strato" / "registry" / "manifests" / "gemma3" / "270m.json"
            assert manifest.exists()
            assert manager.cache_report()["loaded"][0]["source"] == "remote"
        finally:
            await manager.close()

    asyncio.run(main())


def test_a_hot_model_is_promoted_from_disk_to_ram(tmp_path, pushed):
    async def main():
        s = settings(tmp_path, registry=str(pushed), promote_per_hour=3)
        first = ModelManager(s)
        try:
            digest = (await first.engine("gemma3:270m"))._entry.digest
        finally:
            await first.close()         # returns once the disk copy is committed
        assert first.loader.tiers[1].contains(digest)
        second = ModelManager(s)        # a new process: RAM empty, the disk tier has it
        try:
            await second.engine("gemma3:270m")
            assert second.cache_report()["loaded"][0]["source"].startswith("disk:")
            ram = second.loader.tiers[0]
            assert not ram.contains(digest)
            await second.engine("gemma3:270m")    # 3rd request this hour (history persists)
            assert await async_wait_until(
                lambda: second.cache_report()["policy"]["promotions"] == 1, 120)
            assert ram.contains(digest)
        finally:
            await second.close()

    asyncio.run(main())


def test_the_likely_next_model_is_prefetched_with_history_from_disk(tmp_path, pushed):
    async def main():
        s = settings(tmp_path, registry=str(pushed), tiers=f"ram:1GiB,disk:{tmp_path}/d1:2GiB")
        learner = ModelManager(s, budget=1)
        try:
            for model in ("gemma3:270m", "other:v1", "gemma3:270m", "other:v1"):
                await learner.engine(model)
            other_digest = learner._entries["other:v1"].digest
        finally:
            await learner.close()                          # saves policy.json
        fresh = tmp_path / "d2"
        fresh.mkdir()
        shutil.copy(tmp_path / "d1" / "policy.json", fresh / "policy.json")
        s2 = dataclasses.replace(s, tiers=f"ram:1GiB,disk:{fresh}:2GiB")
        manager = ModelManager(s2)
        try:
            assert manager.loader.locate(other_digest) is None
            await manager.engine("gemma3:270m")            # history: other:v1 comes next
            # The counter moves after the prefetch returns, so wait on it, not on the bytes.
            assert await async_wait_until(
                lambda: manager.cache_report()["policy"]["prefetches"] == 1, 120)
            assert manager.loader.locate(other_digest) is not None
            assert "other:v1" not in manager._entries      # bytes only, no engine
        finally:
            await manager.close()

    asyncio.run(main())


def test_registry_down_serves_the_copy_already_in_a_disk_tier(tmp_path, pushed, http_root):
    from tests.services import free_port

    (http_root.directory / "registry").symlink_to(pushed)
    up = settings(tmp_path, registry=f"{http_root.url}/registry")
    dead = dataclasses.replace(up, registry=f"http://127.0.0.1:{free_port()}/registry")

    async def main():
        cold = ModelManager(dead)
        try:
            with pytest.raises(SourceUnavailable) as info:   # nothing cached: a clear 503
                await cold.engine("gemma3:270m")
            assert status_of(info.value)[0] == 503
        finally:
            await cold.close()
        first = ModelManager(up)
        try:
            digest = (await first.engine("gemma3:270m"))._entry.digest
        finally:
            await first.close()                       # returns once the disk copy is in
        assert first.loader.tiers[1].contains(digest)
        second = ModelManager(dead)                   # new process, registry unreachable
        try:
            assert await first_tokens(await second.engine("gemma3:270m"))
            assert second.cache_report()["loaded"][0]["source"].startswith("disk:")
        finally:
            await second.close()

    asyncio.run(main())


def test_two_models_in_the_ram_tier_stay_loaded_together(tmp_path, pushed):
    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed), tiers="ram:1GiB"),
                               budget=2 << 30)
        try:
            a = await manager.engine("gemma3:270m")
            b = await manager.engine("other:v1")
            assert sorted(e["model"] for e in manager.cache_report()["loaded"]) == \
                ["gemma3:270m", "other:v1"]
            again = await manager.engine("gemma3:270m")    # a switch, not a reload
            assert again._engine is a._engine and await first_tokens(b)
        finally:
            await manager.close()

    asyncio.run(main())


class SmallMachine:
    """The real LlamaEngine on a machine with `limit` bytes for a model.

    A load of a bigger file fails the way llama.cpp's does on a full device (the same
    log line, classified by the same `load_failure`); a smaller one is a real load.
    Every attempt is recorded as (file size, n_gpu_layers).
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.calls = limit, []

    def load(self, path: str, *, name: str, settings: Settings, n_gpu_layers: int = 0,
             parked=None, hold=None, on_tensors=None):
        from core.engine.llama import LlamaEngine, load_failure

        size = os.path.getsize(path)
        self.calls.append((size, n_gpu_layers))
        if size > self.limit:
            raise load_failure(f"llama.cpp could not load {path}", [
                f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {size >> 20} MiB "
                "on device 0: cudaMalloc failed: out of memory"])
        return LlamaEngine.load(path, name=name, settings=settings, n_gpu_layers=n_gpu_layers,
                                parked=parked, hold=hold, on_tensors=on_tensors)


def test_out_of_memory_falls_back_to_fewer_layers_then_a_smaller_variant(
        tmp_path, gemma_path, monkeypatch):
    import core.serving.manager
    import tiers.vram
    from tests.smaller_gguf import with_fewer_blocks

    registry = Registry(str(tmp_path / "registry"))
    big = registry.push(str(gemma_path), parse_name_tag("gemma3:270m")).manifest
    small_file = with_fewer_blocks(gemma_path, tmp_path / "small.gguf", keep=4)
    small = registry.push(str(small_file), parse_name_tag("gemma3:270m-4blk")).manifest
    registry.add_variant(parse_name_tag("gemma3:270m"), small)
    # A GPU reporting 1 GiB free: placement plans all of the 253 MB model on it (which
    # then fails, as it would on a device shared with another process).
    monkeypatch.setattr(tiers.vram, "free_device_memory", lambda device=0: 1 << 30)
    machine = SmallMachine(limit=(big.size + small.size) // 2)
    monkeypatch.setattr(core.serving.manager, "_engine_class", lambda: machine)

    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(tmp_path / "registry"),
                                        tiers=f"vram:auto,ram:1GiB,disk:{tmp_path / 'd'}:2GiB"))
        try:
            engine = await manager.engine("gemma3:270m")
            assert engine.info.name == "gemma3:270m"
            assert await first_tokens(engine)            # the variant really decodes
            (loaded,) = manager.cache_report()["loaded"]
            assert loaded["variant"] == "270m-4blk" and loaded["size"] == small.size
            return [n for size, n in machine.calls if size == big.size], \
                [n for size, n in machine.calls if size == small.size]
        finally:
            await manager.close()

    on_big, on_small = asyncio.run(main())
    assert on_big == [19, 18, 14, 10, 6, 2, 0]         # all, no output layer, fewer, none
    assert len(on_small) == 1                          # the variant fit at once

    # A machine too small even for the variant: one clear 503 naming both, no engine.
    machine.limit, machine.calls = small.size - 1, []

    async def too_small():
        manager = ModelManager(settings(tmp_path, registry=str(tmp_path / "registry"),
                                        tiers=f"ram:1GiB,disk:{tmp_path / 'd'}:2GiB"))
        try:
            with pytest.raises(OutOfMemory) as info:
                await manager.engine("gemma3:270m")
            assert "gemma3:270m, gemma3:270m-4blk" in str(info.value)
            assert status_of(info.value)[0] == 503 and info.value.code == "out_of_memory"
            assert manager.cache_report()["loaded"] == []
        finally:
            await manager.close()

    asyncio.run(too_small())
    assert machine.calls == [(big.size, 0), (small.size, 0)]   # CPU only: no layer steps


def test_loads_run_on_the_build_thread(tmp_path, pushed, gemma_path, monkeypatch):
    """Both kinds of load (built while a blob streams, and a local file) run llama.cpp on
    core.engine.build_thread's thread, whose heap was grown before any fetch."""
    from core.engine.llama import LlamaEngine

    real_load = LlamaEngine.load.__func__
    threads: list[str] = []

    def load(cls, path, **kw):
        threads.append(threading.current_thread().name)
        return real_load(cls, path, **kw)

    monkeypatch.setattr(LlamaEngine, "load", classmethod(load))

    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed), model=str(gemma_path)))
        try:
            streamed = await manager.engine("gemma3:270m")
            local = await manager.engine(None)
            sources = {e["source"] for e in manager.cache_report()["loaded"]}
            assert sources == {"remote", "file"}
            assert await first_tokens(streamed) and await first_tokens(local)
        finally:
            await manager.close()

    asyncio.run(main())
    assert len(threads) == 2 and all(t.startswith("strato-build") for t in threads)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to keep free")
def test_a_lone_build_has_a_cpu_of_its_own_for_the_vocabulary(tmp_path, pushed, gemma_path,
                                                               monkeypatch):
    """The first model's build (nothing else loaded) keeps the event loop's thread, and
    every other, off one CPU while llama.cpp builds the vocabulary and metadata; they
    have every CPU back once it turns to the tensors. A build beside a loaded model
    narrows nothing."""
    from core.engine.llama import LlamaEngine

    everything = os.sched_getaffinity(0)
    loop_thread = threading.get_native_id()
    seen: list[tuple[str, int]] = []       # (when, CPUs the loop's thread may use)
    real_load = LlamaEngine.load.__func__

    def load(cls, path, hold=None, on_tensors=None, **kw):
        seen.append(("build", len(os.sched_getaffinity(loop_thread))))

        def recorded_tensors():
            on_tensors()
            seen.append(("tensors", len(os.sched_getaffinity(loop_thread))))

        def recorded_hold():
            passed = hold()
            seen.append(("gate", len(os.sched_getaffinity(loop_thread))))
            return passed

        return real_load(cls, path, hold=recorded_hold if hold else None,
                         on_tensors=recorded_tensors, **kw)

    monkeypatch.setattr(LlamaEngine, "load", classmethod(load))

    async def main():
        manager = ModelManager(settings(tmp_path, registry=str(pushed), model=str(gemma_path)))
        try:
            await manager.engine("gemma3:270m")          # streamed, built alone
            seen.append(("loaded", len(os.sched_getaffinity(loop_thread))))
            await manager.engine(None)                   # a local file, beside it
        finally:
            await manager.close()

    asyncio.run(main())
    n = len(everything)
    assert seen == [("build", n - 1), ("tensors", n), ("gate", n), ("loaded", n),
                    ("build", n), ("tensors", n)]
