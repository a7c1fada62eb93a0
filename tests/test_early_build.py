"""The llama.cpp build that starts while tensor bytes still stream into the RAM tier.

The real engine over the real Gemma, a directory registry and memfd RAM tier: a cold
load builds the model behind the blob's tensor gate (tiers.gate) and serves it; a
chunk that turns out corrupt after the build has started fails the load, llama.cpp
abandons the model at the gate, and nothing is served or kept; the load timings say
where the time went.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from core.catalog.references import parse_name_tag
from core.catalog.registry import Registry
from core.errors import status_of
from core.serving.manager import ModelManager
from tests.test_manager import first_tokens, settings
from tiers import remote
from tiers.errors import CorruptModel, IntegrityError

HANG_GUARD = 120.0   # seconds: only ever reached when the code under test is broken


class GateWatch:
    """The real LlamaEngine, recording each load's path and what its gate answered;
    `reached` is set when llama.cpp has built the model and waits at the gate."""

    def __init__(self) -> None:
        from core.engine.llama import LlamaEngine

        self.engine = LlamaEngine
        self.reached = threading.Event()
        self.answers: list[bool] = []
        self.paths: list[str] = []
        self.errors: list[BaseException] = []

    def load(self, path: str, *, hold=None, **kw):
        self.paths.append(path)

        def watched() -> bool:
            self.reached.set()
            answer = hold()
            self.answers.append(answer)
            return answer

        try:
            return self.engine.load(path, hold=watched if hold else None, **kw)
        except BaseException as exc:
            self.errors.append(exc)
            raise


@pytest.fixture
def watch(monkeypatch) -> GateWatch:
    import core.serving.manager

    watch = GateWatch()
    monkeypatch.setattr(core.serving.manager, "_engine_class", lambda: watch)
    return watch


def test_cold_load_builds_behind_the_gate_and_reports_its_phases(tmp_path, gemma_path,
                                                                  watch):
    Registry(str(tmp_path / "registry")).push(str(gemma_path), parse_name_tag("g:1"))

    async def main():
        manager = ModelManager(settings(tmp_path))
        try:
            engine = await manager.engine("g:1")
            assert await first_tokens(engine)
            (loaded,) = manager.cache_report()["loaded"]
            assert loaded["tier"] == "ram"
            return manager.timings["g:1"], manager.loader.tiers[0].path(loaded["digest"])
        finally:
            await manager.close()

    timings, tier_path = asyncio.run(main())
    assert watch.answers == [True]                     # built early, gate passed once
    assert watch.paths[0].startswith("/proc/self/fd/") and watch.paths[0] != tier_path
    record = timings.record()
    assert {"manifest", "header", "fetch", "llama_load", "gate_wait"} <= set(record["phases"])
    assert record["fetch"]["bytes"] == gemma_path.stat().st_size
    assert record["fetch"]["streams"] >= 1 and record["fetch"]["verify_cpu_s"] > 0
    assert "llama.cpp model + context" in timings.table()


@pytest.mark.parametrize("repack", [False, True], ids=["mapped", "repacked"])
def test_a_chunk_corrupt_after_the_build_started_fails_the_load(tmp_path, gemma_path,
                                                                watch, monkeypatch, repack):
    """Both places the gate sits: after the whole build when the weights are only
    mapped (strato's default), before the first weight copy when llama.cpp repacks."""
    registry = Registry(str(tmp_path / "registry"))
    m = registry.push(str(gemma_path), parse_name_tag("bad:1")).manifest
    blob = Path(registry.root) / m.blob_key
    good = blob.read_bytes()
    at = m.size - 1000                                 # in the last chunk (a layer's)
    with open(blob, "r+b") as f:
        f.seek(at)
        f.write(bytes([good[at] ^ 0xFF]))

    read_range = remote.read_range

    def after_the_build_started(url: str, start: int, end: int, into=None):
        if start <= at < end:                          # the corrupt bytes arrive late
            assert watch.reached.wait(HANG_GUARD), "llama.cpp never reached the gate"
        return read_range(url, start, end, into)

    monkeypatch.setattr(remote, "read_range", after_the_build_started)

    async def main():
        manager = ModelManager(settings(tmp_path, repack=repack))
        try:
            with pytest.raises(IntegrityError) as info:
                await manager.engine("bad:1")
            assert status_of(info.value)[0] == 503
            report = manager.cache_report()
            assert report["loaded"] == [] and report["parked"] == []
            assert all(t["entries"] == [] for t in report["tiers"])
            # The store is repaired: the next load fetches again and serves.
            blob.write_bytes(good)
            engine = await manager.engine("bad:1")
            assert await first_tokens(engine)
        finally:
            await manager.close()

    asyncio.run(main())
    assert watch.answers[0] is False                   # the gate refused the bytes
    assert isinstance(watch.errors[0], CorruptModel)   # llama.cpp abandoned the build
    assert watch.answers[1:] == [True]


def test_the_disk_copy_waits_for_the_first_answer(tmp_path, gemma_path):
    """A cold load into RAM with a disk tier behind it: no byte is copied to disk while
    the engine is built and answers its first request; the copy runs after it."""
    Registry(str(tmp_path / "registry")).push(str(gemma_path), parse_name_tag("g:1"))

    async def main():
        manager = ModelManager(settings(tmp_path))
        try:
            engine = await manager.engine("g:1")
            ram, disk = manager.loader.tiers
            (loaded,) = manager.cache_report()["loaded"]
            digest = loaded["digest"]
            assert ram.contains(digest) and not disk.contains(digest)
            partials = list(Path(disk.root).rglob("*.partial"))
            assert all(p.stat().st_blocks == 0 or _all_zero(p) for p in partials)
            assert await first_tokens(engine)            # the first request ends ...
            await asyncio.to_thread(manager.loader.flush, HANG_GUARD)   # ... the copy runs
            assert disk.contains(digest)
        finally:
            await manager.close()

    asyncio.run(main())


def _all_zero(path: Path) -> bool:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            if block.count(0) != len(block):
                return False
    return True


def test_a_commit_that_fails_after_the_gate_opened_serves_nothing(tmp_path, gemma_path,
                                                                 watch, monkeypatch):
    """The gate opens once every byte is verified, before the RAM tier's commit (which
    unmaps and seals the memfd). A commit that fails then fails the load: the model
    llama.cpp built over the verified bytes is closed unserved, and nothing is kept."""
    from tiers.errors import TierFull
    from tiers.ram import RamWriter

    Registry(str(tmp_path / "registry")).push(str(gemma_path), parse_name_tag("g:1"))
    real_commit = RamWriter.commit
    built: list = []
    real_load = watch.load

    def load(path, **kw):
        built.append(real_load(path, **kw))
        return built[-1]

    def commit_after_the_gate(self, digest, meta=None):
        assert watch.reached.wait(HANG_GUARD), "llama.cpp never reached the gate"
        raise TierFull("ram: the memfd could not be sealed")

    monkeypatch.setattr(watch, "load", load)
    monkeypatch.setattr(RamWriter, "commit", commit_after_the_gate)

    async def main():
        manager = ModelManager(settings(tmp_path))
        try:
            with pytest.raises(TierFull):
                await manager.engine("g:1")
            report = manager.cache_report()
            assert report["loaded"] == [] and report["parked"] == []
            assert all(t["entries"] == [] for t in report["tiers"])
            assert len(built) == 1 and built[0]._closed    # built, closed, never served
            monkeypatch.setattr(RamWriter, "commit", real_commit)
            assert await first_tokens(await manager.engine("g:1"))
        finally:
            await manager.close()

    asyncio.run(main())
    assert watch.answers == [True, True]          # the bytes were verified: the gate opened
