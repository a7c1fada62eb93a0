"""The progressive loader against real stores: cold loads, hits, promotion, plain URIs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.services import Store
from tests.tiny_gguf import digest, plan_for, write_tiny_gguf, zstd_frames
from tiers.base import BlobPlan, TierStats
from tiers.disk import DiskTier
from tiers.gguf_header import parse
from tiers.held_header import HeldHeader
from tiers.loader import REMOTE, Loader
from tiers.ram import RamTier

CHUNK = 16 << 10


@pytest.fixture
def model(tmp_path: Path) -> bytes:
    return write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()


def tiers_in(tmp_path: Path, ram: int = 64 << 20, disk: int = 64 << 20) -> list:
    return [RamTier(ram), DiskTier(tmp_path / "cache", disk)]


def recorded_reads(monkeypatch) -> list[tuple[int, int]]:
    """Every ranged read the loader makes from here on, as (start, end), in order."""
    from tiers import remote

    reads: list[tuple[int, int]] = []
    read_range = remote.read_range

    def recorded(url: str, start: int, end: int, into=None):
        reads.append((start, end))
        return read_range(url, start, end, into)

    monkeypatch.setattr(remote, "read_range", recorded)
    return reads


def test_cold_load_from_each_store_fills_every_tier(store: Store, model: bytes,
                                                    tmp_path: Path) -> None:
    url = store.put("blobs/tiny.gguf", model)
    tiers = tiers_in(tmp_path)
    stats = TierStats()
    loader = Loader(tiers, streams=8, stats=stats)
    headers, progress = [], []
    handle = loader.load(plan_for(url, model, CHUNK, name="tiny:latest"),
                         on_header=headers.append, on_progress=progress.append)
    assert handle.source == REMOTE and handle.tier == "ram"
    assert handle.path.startswith("/proc/self/fd/")
    assert Path(handle.path).read_bytes() == model
    assert handle.digest == digest(model)
    assert headers and headers[0].block_count == 4 and headers[0].architecture == "llama"
    assert headers[0].chat_template == "{{ messages }}"
    assert progress[-1].done == progress[-1].total == len(model)
    # both tiers got a verified copy, named by digest (disk is committed behind RAM)
    loader.flush()
    disk = tiers[1]
    assert (disk.blobs / f"{handle.digest}.gguf").read_bytes() == model
    assert disk.meta(handle.digest)["source"] == url
    assert disk.meta(handle.digest)["gguf"]["block_count"] == 4
    assert not list(disk.blobs.glob("*.partial"))
    snap = stats.snapshot()
    assert snap["ram"]["misses"] == 1 and snap["ram"]["bytes_written"] == len(model)
    assert snap[disk.name]["bytes_written"] == len(model)
    handle.release()


def test_fetched_bytes_land_in_the_ram_tier_in_place(model: bytes, tmp_path: Path,
                                                     http_root, monkeypatch) -> None:
    """The fetch reads into the RAM tier's memfd itself (no copy through `write_at`);
    the disk tier behind it still gets a whole, verified copy, from RAM."""
    from tiers.ram import RamWriter

    def copied(self, offset: int, data: bytes) -> None:
        raise AssertionError("a fetched chunk was copied into RAM, not read in place")

    monkeypatch.setattr(RamWriter, "write_at", copied)
    (http_root.directory / "m.gguf").write_bytes(model)
    tiers = tiers_in(tmp_path)
    loader = Loader(tiers, streams=4)
    handle = loader.load(plan_for(f"{http_root.url}/m.gguf", model, CHUNK))
    assert handle.tier == "ram" and Path(handle.path).read_bytes() == model
    loader.flush()
    assert (tiers[1].blobs / f"{handle.digest}.gguf").read_bytes() == model
    handle.release()


def test_a_build_offered_early_has_the_header_parsed_beside_the_fetch(
        model: bytes, tmp_path: Path, http_root, monkeypatch) -> None:
    """With a manifest's plan (chunk digests, the GGUF summary in its metadata) and an
    early build, the fetch parses no header itself (GIL-bound Python the build does not
    need): the build is offered the verified chunks, and a copy of them is parsed on a
    thread of its own. `on_header` and the handle still get the header, and a later hit
    finds it remembered."""
    import dataclasses

    import tiers.loader as loader_module

    (http_root.directory / "m.gguf").write_bytes(model)
    plan = dataclasses.replace(plan_for(f"{http_root.url}/m.gguf", model, CHUNK),
                               meta={"gguf": {"architecture": "llama"}})
    seen: list[tuple[str, object]] = []
    offered: list = []
    loader = Loader(tiers_in(tmp_path), streams=4)
    handle = loader.load(
        plan, on_header=lambda h: seen.append((threading.current_thread().name, h)),
        on_early=lambda blob: (offered.append(blob.header), blob.close()))
    assert offered == [None]                          # offered on the verified chunks
    assert seen == [("strato-header", parse(model))]  # parsed once, on its own thread
    assert handle.header == parse(model)
    handle.release()
    monkeypatch.setattr(loader_module, "read_header_file", None)   # a hit must not parse
    with loader.load(plan) as hit:
        assert hit.header == parse(model)


def test_a_cold_start_parses_its_header_after_the_first_answer(
        model: bytes, tmp_path: Path, http_root) -> None:
    """With an early build and `copies_after` (a cold start), the header parse waits
    for that event: the load returns with the parse not begun, `on_header` is never
    called, and the handle's `header` is there once the event is set; a later hit
    finds it remembered."""
    import dataclasses

    (http_root.directory / "m.gguf").write_bytes(model)
    plan = dataclasses.replace(plan_for(f"{http_root.url}/m.gguf", model, CHUNK),
                               meta={"gguf": {"architecture": "llama"}})
    first_answer = threading.Event()
    seen: list[object] = []
    loader = Loader(tiers_in(tmp_path), streams=4)
    handle = loader.load(plan, on_header=seen.append, copies_after=first_answer,
                         on_early=lambda blob: blob.close())
    held = handle._header
    assert isinstance(held, HeldHeader) and not held.begun   # nothing set the event
    first_answer.set()
    for _ in range(2):              # the held thread parses (or `header` does, first)
        assert handle.header == parse(model)
    assert seen == []
    handle.release()
    with loader.load(plan) as hit:
        assert hit.header == parse(model)


def test_a_held_header_asked_for_first_is_parsed_by_whoever_asks(
        model: bytes, tmp_path: Path, http_root) -> None:
    """Nothing waits on the held thread: a `header` asked for before the first answer
    (which might wait on that very caller) is parsed right there, once."""
    import dataclasses

    (http_root.directory / "m.gguf").write_bytes(model)
    plan = dataclasses.replace(plan_for(f"{http_root.url}/m.gguf", model, CHUNK),
                               meta={"gguf": {"architecture": "llama"}})
    first_answer = threading.Event()                # not set until the end
    loader = Loader(tiers_in(tmp_path), streams=4)
    try:
        with loader.load(plan, copies_after=first_answer,
                         on_early=lambda blob: blob.close()) as handle:
            assert handle.header == parse(model)
            assert handle._header.begun
    finally:
        first_answer.set()           # the disk tier's held copy may finish now
        loader.flush()


def test_a_held_header_parse_never_runs_when_the_load_fails(
        model: bytes, tmp_path: Path, http_root) -> None:
    """A corrupt chunk after the header fails the load while the parse is held: the
    parse never begins (no `on_header` after the failure)."""
    import dataclasses

    from tiers.errors import IntegrityError

    bad = bytearray(model)
    bad[-10] ^= 0xFF                                  # the last chunk's bytes, not the header's
    (http_root.directory / "m.gguf").write_bytes(bytes(bad))
    plan = dataclasses.replace(plan_for(f"{http_root.url}/m.gguf", model, CHUNK),
                               meta={"gguf": {"architecture": "llama"}})
    first_answer = threading.Event()
    seen: list[object] = []
    loader = Loader(tiers_in(tmp_path), streams=4, retries=0)
    with pytest.raises(IntegrityError):
        loader.load(plan, on_header=seen.append, copies_after=first_answer,
                    on_early=lambda blob: blob.close())
    first_answer.set()               # what the manager does when a load fails
    assert seen == []


def test_header_chunks_that_end_inside_the_header_fail_the_load_as_corrupt(
        tmp_path: Path, http_root) -> None:
    """A plan whose header chunks (a manifest's `tensor_data_offset`) end before the
    header does: the parse beside the fetch reports a truncated GGUF, CorruptModel, and
    not the untyped NeedMore of a prefix parse (a 500)."""
    import dataclasses

    from tiers.errors import CorruptModel

    model = write_tiny_gguf(tmp_path / "big-vocab.gguf", vocab=3_000).read_bytes()
    assert parse(model).data_offset > 2 * CHUNK
    (http_root.directory / "m.gguf").write_bytes(model)
    plan = dataclasses.replace(plan_for(f"{http_root.url}/m.gguf", model, CHUNK),
                               header_chunks=1, meta={"gguf": {"architecture": "llama"}})
    loader = Loader(tiers_in(tmp_path), streams=4)
    with pytest.raises(CorruptModel, match="header is truncated"):
        loader.load(plan, on_early=lambda blob: blob.close())


def test_second_load_hits_ram_then_disk_for_a_new_process(model: bytes, tmp_path: Path,
                                                          http_root) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    plan = plan_for(f"{http_root.url}/m.gguf", model, CHUNK)
    tiers = tiers_in(tmp_path)
    loader = Loader(tiers)
    loader.load(plan).release()
    loader.flush()
    (http_root.directory / "m.gguf").unlink()          # a hit must not need the remote
    again = loader.load(plan)
    assert again.source == "ram" and Path(again.path).read_bytes() == model
    again.release()
    # a new process: empty RAM, same disk directory
    fresh = Loader([RamTier(64 << 20), DiskTier(tmp_path / "cache", 64 << 20)])
    hit = fresh.load(plan)
    assert hit.source == fresh.tiers[1].name and hit.tier == fresh.tiers[1].name
    assert hit.header.block_count == 4
    hit.release()
    promoted = fresh.load(plan, promote=True)
    assert promoted.tier == "ram" and Path(promoted.path).read_bytes() == model
    assert fresh.tiers[0].contains(plan.digest)


def test_plain_uri_is_hashed_while_streaming_and_remembered(model: bytes, tmp_path: Path,
                                                            s3_bucket: str) -> None:
    from tiers import remote

    url = f"{s3_bucket}/plain/tiny.gguf"
    remote.write_bytes(url, model)
    loader = Loader(tiers_in(tmp_path), streams=4)
    handle = loader.load(BlobPlan(url=url, chunk_size=CHUNK))
    assert handle.digest == digest(model) and handle.size == len(model)
    handle.release()
    assert loader.digest_for(url) == digest(model)
    remote.rm(url)                                     # the hit must not touch the remote
    again = loader.load(BlobPlan(url=url, chunk_size=CHUNK))
    assert again.source == "ram" and again.digest == digest(model)


def test_plain_uri_revalidates_when_asked(model: bytes, tmp_path: Path, http_root) -> None:
    path = http_root.directory / "m.gguf"
    path.write_bytes(model)
    url = f"{http_root.url}/m.gguf"
    loader = Loader(tiers_in(tmp_path))
    first = loader.load(BlobPlan(url=url, chunk_size=CHUNK))
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=7).read_bytes()
    path.write_bytes(other)
    assert loader.load(BlobPlan(url=url, chunk_size=CHUNK)).digest == first.digest
    changed = loader.load(BlobPlan(url=url, chunk_size=CHUNK), revalidate=True)
    assert changed.digest == digest(other) and changed.source == REMOTE


def test_zstd_frames_are_decompressed_and_verified(model: bytes, tmp_path: Path,
                                                   gcs_bucket: str) -> None:
    from tiers import remote

    frames, offsets = zstd_frames(model, CHUNK)
    url = f"{gcs_bucket}/blobs/blake3/{digest(model)}"
    remote.write_bytes(url, frames)
    raw = plan_for(url, model, CHUNK)
    plan = BlobPlan(url=url, size=len(model), digest=raw.digest, chunk_size=CHUNK,
                    chunk_digests=raw.chunk_digests, compression="zstd",
                    frame_offsets=offsets)
    handle = Loader(tiers_in(tmp_path)).load(plan)
    assert Path(handle.path).read_bytes() == model


def test_fetch_order_puts_the_header_first(model: bytes, tmp_path: Path, http_root) -> None:
    """A layer-ordered plan (header chunk first, then last layer first) yields the exact
    bytes; the header is announced after the first chunk, while the rest still streams."""
    (http_root.directory / "m.gguf").write_bytes(model)
    n = -(-len(model) // CHUNK)
    order = (0, *range(n - 1, 0, -1))
    events: list[tuple[str, int]] = []
    loader = Loader(tiers_in(tmp_path), streams=1)
    handle = loader.load(plan_for(f"{http_root.url}/m.gguf", model, CHUNK, order=order),
                         on_header=lambda h: events.append(("header", 0)),
                         on_progress=lambda p: events.append(("progress", p.done)))
    assert Path(handle.path).read_bytes() == model
    assert events[0] == ("header", 0) and events[1] == ("progress", CHUNK)
    assert len(events) == n + 1 and events[-1] == ("progress", len(model))
    assert parse(model).data_offset == handle.header.data_offset


def test_targets_limit_where_a_miss_is_written(model: bytes, tmp_path: Path,
                                               http_root) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    tiers = tiers_in(tmp_path)
    handle = Loader(tiers).load(plan_for(f"{http_root.url}/m.gguf", model, CHUNK),
                                targets=[tiers[1].name])
    assert handle.tier == tiers[1].name
    assert not tiers[0].contains(handle.digest) and tiers[1].contains(handle.digest)


def test_background_promotion_copies_to_the_next_faster_tier(model: bytes, tmp_path: Path,
                                                             http_root) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    tiers = tiers_in(tmp_path)
    loader = Loader(tiers)
    plan = plan_for(f"{http_root.url}/m.gguf", model, CHUNK)
    loader.load(plan, targets=[tiers[1].name]).release()
    assert loader.promote(plan.digest)
    assert tiers[0].contains(plan.digest)
    assert Path(tiers[0].path(plan.digest)).read_bytes() == model
    assert not loader.promote("0" * 64)


def test_a_header_spanning_many_chunks(tmp_path: Path, http_root) -> None:
    big = write_tiny_gguf(tmp_path / "big.gguf", vocab=20_000).read_bytes()
    header_size = parse(big).header_size
    assert header_size > 4 * CHUNK
    (http_root.directory / "big.gguf").write_bytes(big)
    events: list[tuple[str, int]] = []
    handle = Loader(tiers_in(tmp_path), streams=4).load(
        plan_for(f"{http_root.url}/big.gguf", big, CHUNK),
        on_header=lambda h: events.append(("header", h.data_offset)),
        on_progress=lambda p: events.append(("progress", p.done)))
    headers = [e for e in events if e[0] == "header"]
    assert headers == [("header", parse(big).data_offset)]
    after = [done for kind, done in events[events.index(headers[0]):] if kind == "progress"]
    assert after[0] < len(big) // 2 and after[-1] == len(big)   # announced mid-stream
    assert Path(handle.path).read_bytes() == big


def test_chunks_are_coalesced_into_one_read_per_stream_with_the_header_first():
    from tiers.fetch import plan_runs

    # 31 chunks, 16 streams: the header chunk alone, then runs of two.
    runs = plan_runs(list(range(31)), 16, 4)
    assert runs[0] == [0] and all(len(r) == 2 for r in runs[1:]) and len(runs) == 16
    assert [i for r in runs for i in r] == list(range(31))
    # Bounded by max_chunks; only consecutive chunks share a read; order is kept.
    assert plan_runs(list(range(9)), 1, 3) == [[0], [1, 2, 3], [4, 5, 6], [7, 8]]
    assert plan_runs([0, 5, 6, 7, 2, 3], 1, 8) == [[0], [5, 6, 7], [2, 3]]
    assert plan_runs([4], 16, 4) == [[4]] and plan_runs([], 16, 4) == []
    # A header over three chunks is one read of its own, ahead of the layers.
    assert plan_runs(list(range(9)), 2, 8, head=3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_bulk_reads_wait_for_bulk_after(model: bytes, tmp_path: Path, http_root,
                                        monkeypatch) -> None:
    """`bulk_after` (a cold start's llama_cpp import) holds every read after the
    header's: the early build is offered on the header alone, the rest follows once the
    event is set, and the blob is whole."""
    import threading

    (http_root.directory / "m.gguf").write_bytes(model)
    plan = plan_for(f"{http_root.url}/m.gguf", model, CHUNK)
    head_bytes = plan.header_chunks * CHUNK
    reads = recorded_reads(monkeypatch)
    reached = threading.Event()

    class Bulk(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            reached.set()
            return super().wait(timeout)

    bulk, offered = Bulk(), threading.Event()
    result: list = []
    loader = Loader(tiers_in(tmp_path), streams=4)
    thread = threading.Thread(target=lambda: result.append(loader.load(
        plan, bulk_after=bulk, on_early=lambda blob: (offered.set(), blob.close()))))
    thread.start()
    assert reached.wait(60) and offered.is_set()
    assert reads and all(end <= head_bytes for _, end in reads)   # the header's only
    bulk.set()
    thread.join(60)
    assert Path(result[0].path).read_bytes() == model
    assert max(end for _, end in reads) == len(model)
