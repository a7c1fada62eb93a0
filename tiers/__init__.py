"""strato's storage layer: remote object stores, local tiers, and the loader over them.

tiers/ never imports core/. core/ converts its manifests into `BlobPlan`s and calls:

    from tiers.base import BlobPlan, TierStats
    from tiers.tier_config import build_tiers           # STRATO_TIERS -> ([Tier], VramPlacer|None)
    from tiers.loader import Loader, ModelHandle, Progress

    tiers, vram = build_tiers("ram:4GiB,disk:/tmp/strato:8GiB")
    loader = Loader(tiers, streams=16, stats=TierStats(sink=record_metric))
    handle = loader.load(BlobPlan(url="s3://b/k.gguf", chunk_size=8 << 20),
                         on_header=lambda h: ..., on_progress=lambda p: ...)
    llama = Llama(handle.path, ...)   # handle.digest, handle.source, handle.header
    handle.release()                  # unpin: LRU may evict it again

Remote objects (tiers/remote.py, the only module that knows clouds):
    filesystem(url) -> (fs, path); info(url) -> RemoteInfo(size, etag);
    read_range(url, start, end); read_bytes(url); write_bytes(url, data);
    put_file(local, url, concurrency=8); exists(url); ls(url); rm(url)

GGUF headers (tiers/gguf_header.py): read_header(read, size), read_header_file(path),
parse(prefix) -> GGUFHeader (architecture, file_type, context_length, block_count,
chat_template, data_offset, layer_ranges(), layer_bytes(), summary()).

Loader extras: locate(digest), digest_for(url), promote(digest, to=None) (policy copies a
blob up a tier, verified), flush() (wait for the disk tiers written behind RAM).
Inside the loader: tiers/fetch.py (concurrent verified chunk fetch, Progress),
tiers/writebehind.py (disk/EFS filled behind RAM without slowing it).

Decisions (pure): tiers/vram.py (n_gpu_layers, OOM retry sequence), tiers/policy.py
(promotion and prefetch). Errors: tiers/errors.py.
"""
