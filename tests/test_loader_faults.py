"""Faults, each against real servers: corrupt bytes, truncation, cut connections, kill -9,
racing processes, tiers too small, unknown objects, a full filesystem."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.tiny_gguf import digest, plan_for, write_tiny_gguf
from tiers.base import BlobPlan
from tiers.disk import DiskTier
from tiers.errors import (
    CorruptModel,
    DiskFull,
    IntegrityError,
    ObjectNotFound,
    SourceUnavailable,
    TierFull,
)
from tiers.loader import REMOTE, Loader
from tiers.ram import RamTier

CHUNK = 16 << 10
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model(tmp_path: Path) -> bytes:
    return write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()


def nothing_kept(*tiers) -> bool:
    """No tier holds a blob, and no disk tier has a file a reader would take for one."""
    for t in tiers:
        if t.entries():
            return False
        if isinstance(t, DiskTier) and list(t.blobs.iterdir()):
            return False
    return True


def port_of(url: str) -> int:
    return urlsplit(url).port or 80


def test_corrupted_byte_in_the_blob_is_refused_never_served(model: bytes, tmp_path: Path,
                                                             s3_bucket: str) -> None:
    from tiers import remote

    plan = plan_for(f"{s3_bucket}/blobs/tiny", model, CHUNK)
    bad = bytearray(model)
    bad[len(model) // 2] ^= 0x01
    remote.write_bytes(plan.url, bytes(bad))
    tiers = [RamTier(64 << 20), DiskTier(tmp_path / "cache", 64 << 20)]
    with pytest.raises(IntegrityError) as err:
        Loader(tiers, retries=2, backoff=0.01).load(plan)
    bad_chunk = (len(model) // 2) // CHUNK
    assert f"chunk {bad_chunk}" in str(err.value) and plan.chunk_digests[bad_chunk] in str(err.value)
    assert nothing_kept(*tiers)


def test_whole_blob_digest_mismatch_without_chunk_digests(model: bytes, tmp_path: Path,
                                                          http_root) -> None:
    bad = bytearray(model)
    bad[-1] ^= 0x01
    (http_root.directory / "m.gguf").write_bytes(bytes(bad))
    plan = plan_for(f"{http_root.url}/m.gguf", model, CHUNK, per_chunk=False)
    tiers = [DiskTier(tmp_path / "cache", 64 << 20)]
    with pytest.raises(IntegrityError, match=plan.digest):
        Loader(tiers, retries=0).load(plan)
    assert nothing_kept(*tiers)


def test_a_byte_flipped_in_transit_is_refetched(model: bytes, tmp_path: Path, http_root,
                                                fault_proxy) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    proxy = fault_proxy(port_of(http_root.url), cut_after=4000, faulty=2, flip=True)
    plan = plan_for(f"{proxy.url}/m.gguf", model, CHUNK)
    tiers = [RamTier(64 << 20)]
    handle = Loader(tiers, streams=2, backoff=0.01).load(plan)
    assert proxy.faults >= 1
    assert Path(handle.path).read_bytes() == model
    # the bad bytes were read in place and read again; nothing of the failed read kept
    # the memfd mapped writable, so the verified blob is sealed against writes
    with pytest.raises(PermissionError):
        os.pwrite(int(handle.path.rsplit("/", 1)[1]), b"x", 0)


def test_truncated_object_is_refused(model: bytes, tmp_path: Path, http_root) -> None:
    plan = plan_for(f"{http_root.url}/m.gguf", model, CHUNK)
    (http_root.directory / "m.gguf").write_bytes(model[:len(model) - 1000])
    tiers = [RamTier(64 << 20), DiskTier(tmp_path / "cache", 64 << 20)]
    with pytest.raises(CorruptModel, match="truncated"):
        Loader(tiers, retries=1, backoff=0.01).load(plan)
    assert nothing_kept(*tiers)


def test_truncated_plain_gguf_is_refused_by_its_header(model: bytes, tmp_path: Path,
                                                       gcs_bucket: str) -> None:
    from tiers import remote

    url = f"{gcs_bucket}/plain/cut.gguf"
    remote.write_bytes(url, model[:len(model) - 1000])
    tiers = [DiskTier(tmp_path / "cache", 64 << 20)]
    with pytest.raises(CorruptModel, match="truncated"):
        Loader(tiers).load(BlobPlan(url=url, chunk_size=CHUNK))
    assert nothing_kept(*tiers)


def test_not_a_gguf_is_refused(tmp_path: Path, http_root) -> None:
    (http_root.directory / "notes.txt").write_bytes(b"hello " * 10_000)
    tiers = [DiskTier(tmp_path / "cache", 64 << 20)]
    with pytest.raises(CorruptModel, match="magic"):
        Loader(tiers).load(BlobPlan(url=f"{http_root.url}/notes.txt", chunk_size=CHUNK))
    assert nothing_kept(*tiers)


def test_connection_cut_mid_stream_is_retried(model: bytes, tmp_path: Path, moto_server,
                                              monkeypatch, fault_proxy) -> None:
    """S3 through a proxy that drops the first connections part-way through a body."""
    import boto3

    from tests.services import s3_env

    s3_env(monkeypatch, moto_server)
    boto3.client("s3").create_bucket(Bucket="cut")
    boto3.client("s3").put_object(Bucket="cut", Key="m.gguf", Body=model)
    proxy = fault_proxy(port_of(moto_server), cut_after=5000, faulty=3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    tiers = [RamTier(64 << 20), DiskTier(tmp_path / "cache", 64 << 20)]
    loader = Loader(tiers, streams=4, backoff=0.01)
    handle = loader.load(plan_for("s3://cut/m.gguf", model, CHUNK))
    loader.flush()
    assert proxy.faults >= 1
    assert Path(handle.path).read_bytes() == model
    assert (tiers[1].blobs / f"{digest(model)}.gguf").read_bytes() == model


def test_a_source_that_keeps_failing_ends_in_a_clear_error(model: bytes, tmp_path: Path,
                                                           http_root, fault_proxy) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    proxy = fault_proxy(port_of(http_root.url), cut_after=3000)       # every connection
    plan = plan_for(f"{proxy.url}/m.gguf", model, CHUNK)
    tiers = [RamTier(64 << 20), DiskTier(tmp_path / "cache", 64 << 20)]
    with pytest.raises(SourceUnavailable) as err:
        Loader(tiers, streams=2, retries=2, backoff=0.01).load(plan)
    assert f"{plan.url} kept failing after 3 attempts" in str(err.value)
    assert nothing_kept(*tiers)


def test_unknown_object(tmp_path: Path, az_container: str) -> None:
    tiers = [RamTier(64 << 20), DiskTier(tmp_path / "cache", 64 << 20)]
    loader = Loader(tiers)
    with pytest.raises(ObjectNotFound):
        loader.load(BlobPlan(url=f"{az_container}/no/such.gguf", chunk_size=CHUNK))
    with pytest.raises(ObjectNotFound):
        loader.load(BlobPlan(url=f"{az_container}/no/such.gguf", size=100, digest="a" * 64,
                             chunk_size=CHUNK))
    assert nothing_kept(*tiers)


def test_tier_too_small_for_the_model(model: bytes, tmp_path: Path, http_root) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    plan = plan_for(f"{http_root.url}/m.gguf", model, CHUNK)
    with pytest.raises(TierFull, match=f"needs {len(model)} bytes"):
        Loader([RamTier(len(model) - 1)]).load(plan)
    # a small fast tier is skipped; the next one that fits takes the model
    tiers = [RamTier(len(model) - 1), DiskTier(tmp_path / "cache", 64 << 20)]
    handle = Loader(tiers).load(plan)
    assert handle.tier == tiers[1].name and not tiers[0].entries()


def test_tier_full_of_pinned_models(model: bytes, tmp_path: Path, http_root) -> None:
    other = write_tiny_gguf(tmp_path / "o.gguf", seed=3).read_bytes()
    (http_root.directory / "a.gguf").write_bytes(model)
    (http_root.directory / "b.gguf").write_bytes(other)
    ram = RamTier(len(model) + len(other) // 2)
    loader = Loader([ram])
    held = loader.load(plan_for(f"{http_root.url}/a.gguf", model, CHUNK))
    with pytest.raises(TierFull, match="in use"):
        loader.load(plan_for(f"{http_root.url}/b.gguf", other, CHUNK))
    held.release()                    # unpinned: LRU may now evict it
    b = loader.load(plan_for(f"{http_root.url}/b.gguf", other, CHUNK))
    assert b.source == REMOTE and not ram.contains(held.digest)
    assert loader.stats.snapshot()["ram"]["evictions"] == 1


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    from tests.tiny_gguf import plan_for
    from tiers.disk import DiskTier
    from tiers.loader import Loader

    data = open({model!r}, "rb").read()
    plan = plan_for({url!r}, data, {chunk})
    go = {go!r}
    while go and not os.path.exists(go):
        time.sleep(0.01)
    def progress(p):
        if {kill_after} and p.done >= {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep({delay})
    h = Loader([DiskTier({cache!r}, 1 << 30)], streams=1).load(plan, on_progress=progress)
    print(h.source, h.digest, h.resumed)
""")


def child(model_path: Path, url: str, cache: Path, *, kill_after: int = 0,
          delay: float = 0.0, go: str = "") -> subprocess.Popen:
    code = CHILD.format(root=str(ROOT), model=str(model_path), url=url, chunk=CHUNK,
                        kill_after=kill_after, delay=delay, cache=str(cache), go=go)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def killed_mid_download(tmp_path: Path, url: str, cache: Path, *, after: int) -> None:
    """A child process downloading `url` into `cache` that SIGKILLs itself after
    `after` bytes have landed."""
    proc = child(tmp_path / "tiny.gguf", url, cache, kill_after=after)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL


def test_killed_during_download_then_restarted(model: bytes, tmp_path: Path,
                                               http_root) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    url = f"{http_root.url}/m.gguf"
    cache = tmp_path / "cache"
    killed_mid_download(tmp_path, url, cache, after=5 * CHUNK)
    blobs = cache / "blobs"
    assert not list(blobs.glob("*.gguf")) and not list(blobs.glob("*.json"))
    assert len(list(blobs.glob("*.partial"))) == 1
    # a reader in a new process does not see a model
    assert not DiskTier(cache, 1 << 30).contains(digest(model))
    proc = child(tmp_path / "tiny.gguf", url, cache)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    source, got, resumed = out.split()
    assert source == REMOTE and got == digest(model)
    assert int(resumed) >= 5 * CHUNK          # the chunks already on disk were kept
    assert (blobs / f"{got}.gguf").read_bytes() == model
    assert not list(blobs.glob("*.partial"))


def test_resume_after_kill_into_ram_and_disk(model: bytes, tmp_path: Path, http_root) -> None:
    """The restarted server has RAM in front: good chunks come from the disk partial."""
    (http_root.directory / "m.gguf").write_bytes(model)
    url = f"{http_root.url}/m.gguf"
    cache = tmp_path / "cache"
    killed_mid_download(tmp_path, url, cache, after=4 * CHUNK)
    tiers = [RamTier(64 << 20), DiskTier(cache, 64 << 20)]
    loader = Loader(tiers)
    handle = loader.load(plan_for(url, model, CHUNK))
    assert handle.tier == "ram" and handle.resumed >= 4 * CHUNK
    assert Path(handle.path).read_bytes() == model
    loader.flush()
    assert (cache / "blobs" / f"{digest(model)}.gguf").read_bytes() == model
    assert not list((cache / "blobs").glob("*.partial"))


def test_two_processes_racing_on_one_cache_dir(model: bytes, tmp_path: Path,
                                               http_root) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    url = f"{http_root.url}/m.gguf"
    cache = tmp_path / "cache"
    go = tmp_path / "go"
    procs = [child(tmp_path / "tiny.gguf", url, cache, delay=0.01, go=str(go))
             for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {o.split()[1] for o, _ in outs} == {digest(model)}
    # one fetch across processes: the disk tier's fetch lock makes the second wait and
    # open the committed file (Managed Instances, instances on one EFS)
    sources = sorted(o.split()[0] for o, _ in outs)
    assert sources.count(REMOTE) == 1 and sources[0].startswith("disk"), sources
    blobs = cache / "blobs"
    assert sorted(f.name for f in blobs.iterdir()) == [f"{digest(model)}.gguf",
                                                      f"{digest(model)}.json"]
    assert (blobs / f"{digest(model)}.gguf").read_bytes() == model


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 128 KiB tmpfs, so a write hits ENOSPC for real (needs mount privileges)."""
    mnt = tmp_path / "tiny-fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_filesystem_is_disk_full(model: bytes, tiny_fs: Path, http_root) -> None:
    (http_root.directory / "m.gguf").write_bytes(model)
    disk = DiskTier(tiny_fs / "cache", 1 << 30)          # the tier believes it has room
    with pytest.raises(DiskFull, match="no space"):
        Loader([disk]).load(plan_for(f"{http_root.url}/m.gguf", model, CHUNK))
    assert not os.listdir(disk.blobs)
