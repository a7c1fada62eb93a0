"""Cold start: strato's tiered loader versus the plain path, against one S3 (moto_server).

One run, same object store, same model (the bundled Gemma 3 270M, 253 MB), empty caches:

1. raw fetch     the fastest plain s3fs fetch of the GGUF's bytes into memory (many
                 concurrent ranged reads; the best of a few stream counts and range
                 sizes, 8 MiB or one range per stream). The floor.
2. warm          Llama(...) on a file already in the page cache, then one token.
3. plain path    boto3 `download_file`, then `Llama(...)`, then one token: what a
                 Lambda handler without strato does.
4. strato cold   ModelManager with empty RAM and disk tiers, registry on S3: request ->
                 manifest -> verified layer-ordered fetch -> load -> first token.
5. swap          two models resident in the RAM tier, one engine at a time: time to the
                 first token of the model that was just unloaded (no remote access);
                 and the same switch when memory lets both engines stay loaded (the
                 default: an engine over the RAM tier adds only its KV cache).

Printed: each time, `strato / plain` (target <= 0.7) and `strato / (raw + warm)`
(target <= 1.15), and the swap time (target < 1 s). Not a test: numbers depend on the
machine; README.md quotes the ones measured there.

    .venv/bin/python bench/cold_start.py [--streams 16] [--chunk 8MiB]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

BUCKET = "strato-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def drop_page_cache(path: Path) -> None:
    """Best effort: evict one file from the page cache so 'cold' means cold locally too."""
    try:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    except OSError:
        pass


def one_token_llama(path: str, threads: int) -> float:
    """Llama(...) then one generated token; returns seconds (the plain path's tail)."""
    from llama_cpp import Llama

    start = time.monotonic()
    llm = Llama(path, n_ctx=256, n_threads=threads, verbose=False)
    llm.create_completion("The sky is", max_tokens=1, temperature=0.0)
    seconds = time.monotonic() - start
    llm.close()
    return seconds


def raw_fetch(url: str, size: int, streams: int, range_size: int) -> float:
    """Seconds for s3fs to read the whole object as `range_size` ranges, `streams` at a
    time, into memory (no verification, no tier writes: the floor for a fetch)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    path = url.split("://", 1)[1]
    starts = list(range(0, size, range_size))
    ends = [min(s + range_size, size) for s in starts]
    start = time.monotonic()
    # s3fs runs cat_ranges concurrently on its event loop, `batch_size` at a time.
    parts = fs.cat_ranges([path] * len(starts), starts, ends, batch_size=streams)
    seconds = time.monotonic() - start
    assert sum(len(p) for p in parts) == size
    return seconds


def fastest_raw_fetch(url: str, size: int, stream_counts: list[int],
                      chunk: int) -> tuple[float, str]:
    """The best of several stream counts, each with `chunk`-sized ranges and with one
    range per stream (what strato's run coalescing approaches): the peer gets tuned."""
    best: tuple[float, str] | None = None
    for n in stream_counts:
        per_stream = -(-size // n)
        for range_size in sorted({chunk, per_stream}):
            seconds = raw_fetch(url, size, n, range_size)
            if best is None or seconds < best[0]:
                best = (seconds, f"{n} streams x {range_size / 2**20:.0f} MiB")
    assert best is not None
    return best


async def first_token(manager, model: str) -> float:
    from core.engine.protocol import GenerationRequest, SamplingParams

    start = time.monotonic()
    engine = await manager.engine(model)
    async for _ in engine.generate(GenerationRequest("The sky is", 1,
                                                     SamplingParams(temperature=0.0))):
        break
    return time.monotonic() - start


async def back_and_forth(manager) -> float:
    """First-token time of returning to the default model after serving another one."""
    try:
        await first_token(manager, "gemma3:270m")
        await first_token(manager, "other:v1")
        return await first_token(manager, "gemma3:270m")
    finally:
        await manager.close()


def variant(gemma: Path, dest: Path) -> Path:
    data = bytearray(gemma.read_bytes())
    at = data.index(b"general.name") + len(b"general.name") + 12
    data[at] = ord("X")
    dest.write_bytes(bytes(data))
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--chunk", default="8MiB")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    from core.config import Settings
    from core.catalog.bundled import default_model_path
    from core.serving.manager import ModelManager
    from core.catalog.references import parse_name_tag
    from core.catalog.registry import Registry
    from tiers.tier_config import parse_size

    chunk = parse_size(args.chunk)
    gemma = default_model_path()
    size = gemma.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="strato-bench-"))
    moto, endpoint = start_moto()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    results: dict[str, float] = {}
    try:
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(gemma), BUCKET, "raw/gemma.gguf")
        registry = Registry(f"s3://{BUCKET}/registry", chunk_size=chunk, streams=args.streams)
        registry.push(str(gemma), parse_name_tag("gemma3:270m"))
        registry.push(str(variant(gemma, work / "variant.gguf")), parse_name_tag("other:v1"))
        print(f"model: {gemma.name}, {size / 1e6:.1f} MB; S3: moto_server at {endpoint}; "
              f"{args.threads} threads, {args.streams} streams, chunk {args.chunk}")

        # Both sides get the same stream counts and keep their best: the store decides
        # what is fastest (moto pays per request, S3 per connection), not the defaults.
        stream_counts = sorted({4, 8, args.streams, 32})
        raw, best_config = fastest_raw_fetch(f"s3://{BUCKET}/raw/gemma.gguf", size,
                                             stream_counts, chunk)
        results[f"raw fetch (s3fs, best: {best_config})"] = raw
        one_token_llama(str(gemma), args.threads)            # page cache warm
        results["warm load + 1 token"] = warm = one_token_llama(str(gemma), args.threads)

        target = work / "plain.gguf"
        start = time.monotonic()
        s3.download_file(BUCKET, "raw/gemma.gguf", str(target))
        download = time.monotonic() - start
        results["plain: download_file"] = download
        results["plain: total (download + load + 1 token)"] = plain = \
            download + one_token_llama(str(target), args.threads)

        settings = Settings(registry=f"s3://{BUCKET}/registry", ctx=256, parallel=2,
                            threads=args.threads, streams=args.streams, chunk=chunk,
                            tiers=f"ram:2GiB,disk:{work / 'tier'}:4GiB")

        async def strato() -> None:
            colds = {}
            for n in stream_counts:                  # empty tiers for every run
                manager = ModelManager(dataclasses.replace(
                    settings, streams=n, tiers=f"ram:2GiB,disk:{work / f'tier{n}'}:4GiB"))
                try:
                    colds[n] = await first_token(manager, "gemma3:270m")
                finally:
                    await manager.close()
                results[f"strato cold, {n} streams: request -> first token"] = colds[n]
            best = min(colds, key=colds.__getitem__)
            results[f"strato cold (best: {best} streams)"] = colds[best]
            ram_only = dataclasses.replace(settings, tiers="ram:2GiB")
            results["swap (RAM tier, other model unloaded)"] = \
                await back_and_forth(ModelManager(ram_only, budget=1))
            results["switch (RAM tier, both engines resident)"] = \
                await back_and_forth(ModelManager(ram_only))

        asyncio.run(strato())
    finally:
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    for name, seconds in results.items():
        print(f"  {name:<52} {seconds:7.2f} s")
    cold = next(v for k, v in results.items() if k.startswith("strato cold (best"))
    swap = results["swap (RAM tier, other model unloaded)"]
    for name, value, unit, target in (
            ("strato cold / plain path", cold / plain, "x", "<= 0.70"),
            ("strato cold / (raw fetch + warm)", cold / (raw + warm), "x", "<= 1.15"),
            ("swap", swap, " s", "< 1 s")):
        print(f"  {name:<52} {value:7.2f}{unit}  (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
