"""End to end with the real model: Gemma 3 270M streamed from S3 (moto) into RAM and disk,
then loaded by llama.cpp straight from the memfd, and served again from the RAM tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_gguf import chunk_digests, digest
from tiers.base import BlobPlan
from tiers.disk import DiskTier
from tiers.loader import REMOTE, Loader
from tiers.ram import RamTier

CHUNK = 8 << 20


@pytest.fixture(scope="module")
def gemma_bytes(gemma_path: Path) -> bytes:
    return gemma_path.read_bytes()


def test_cold_load_from_s3_then_llama_cpp_runs_from_ram(gemma_bytes: bytes, s3_bucket: str,
                                                        tmp_path: Path, gemma_path: Path
                                                        ) -> None:
    from llama_cpp import Llama

    from tiers import remote

    url = f"{s3_bucket}/blobs/blake3/{digest(gemma_bytes)}"
    remote.put_file(str(gemma_path), url, concurrency=4)
    plan = BlobPlan(url=url, size=len(gemma_bytes), digest=digest(gemma_bytes),
                    chunk_size=CHUNK, chunk_digests=chunk_digests(gemma_bytes, CHUNK),
                    name="gemma3:270m")
    tiers = [RamTier(1 << 30), DiskTier(tmp_path / "cache", 1 << 30)]
    loader = Loader(tiers, streams=8)
    headers = []
    handle = loader.load(plan, on_header=headers.append)
    assert handle.source == REMOTE and handle.path.startswith("/proc/self/fd/")
    assert headers[0].architecture == "gemma3" and headers[0].block_count == 18
    loader.flush()
    assert (tiers[1].blobs / f"{handle.digest}.gguf").stat().st_size == len(gemma_bytes)

    llm = Llama(model_path=handle.path, n_ctx=64, n_threads=2, verbose=False)
    out = llm("The capital of France is", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1 and out["choices"][0]["text"]
    del llm
    handle.release()

    remote.rm(url)                       # from here on the remote must not be needed
    again = loader.load(plan)
    assert again.source == "ram" and again.path == handle.path
    cold_process = Loader([RamTier(1 << 30), DiskTier(tmp_path / "cache", 1 << 30)])
    from_disk = cold_process.load(plan, promote=True)
    assert from_disk.source == cold_process.tiers[1].name and from_disk.tier == "ram"
