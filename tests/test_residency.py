"""core/serving/residency.py: the memory budget, what to unload (pure), and the request
count of a `TrackedEngine` over the real model, which "never unload a model in use"
rests on."""

from __future__ import annotations

import asyncio

from core.engine.protocol import GenerationRequest, SamplingParams
from core.serving.residency import (
    OVERHEAD,
    Loaded,
    Resident,
    TrackedEngine,
    footprint,
    memory_budget,
    to_unload,
)


def test_budget_is_a_fraction_of_the_memory_this_process_may_use() -> None:
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    whole = memory_budget(1.0)
    assert 0 < whole <= total                      # the cgroup limit, if lower, wins
    assert memory_budget(0.5) == int(whole * 0.5)


def test_unloading_stops_as_soon_as_the_new_model_fits() -> None:
    rs = [Resident("old", 300, 1.0, False), Resident("mid", 100, 2.0, False),
          Resident("new", 100, 3.0, False)]
    assert to_unload(rs, 300, 600) == ["old"]      # LRU first, and only what is needed
    assert to_unload(rs, 500, 600) == ["old", "mid"]
    # Unloading everything idle always makes room for the next model to be tried.
    assert to_unload(rs, 10_000, 600) == ["old", "mid", "new"]


def test_footprint_counts_weights_outside_the_ram_tier_and_the_kv_cache() -> None:
    in_ram = footprint(1 << 30, 1024, 18, in_ram_tier=True)
    assert footprint(1 << 30, 1024, 18, in_ram_tier=False) == in_ram + (1 << 30)
    assert footprint(0, 2048, 18, in_ram_tier=True) - OVERHEAD == \
        2 * (footprint(0, 1024, 18, in_ram_tier=True) - OVERHEAD)


def test_a_tracked_engine_counts_requests_in_flight(load_engine) -> None:
    engine = load_engine(ctx=256, parallel=2)
    entry = Loaded("gemma", engine, None, None, "file", 0.0, 0)
    idle: list[int] = []
    tracked = TrackedEngine(entry, on_idle=lambda: idle.append(entry.active))
    request = GenerationRequest(prompt="Once upon a time", max_tokens=3,
                                sampling=SamplingParams(temperature=0))

    async def go() -> None:
        stream = tracked.generate(request)
        await stream.__anext__()
        assert entry.active == 1 and idle == []     # busy while a stream is open
        other = tracked.generate(request)
        await other.__anext__()
        assert entry.active == 2
        await other.aclose()                         # a client that went away
        assert entry.active == 1 and idle == []
        assert [ev async for ev in stream][-1].completion_tokens == 3
        assert entry.active == 0 and idle == [0]     # idle once, when the last one ended
        vectors, _ = await tracked.embed(["hello"])
        assert len(vectors) == 1 and entry.active == 0 and idle == [0, 0]

    asyncio.run(go())
    assert tracked.info is engine.info and tracked.queue_depth() == 0
    tracked.close()                                  # handlers never close the engine
    assert engine.tokenize("hi") == tracked.tokenize("hi")
