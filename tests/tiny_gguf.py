"""Tiny real GGUF files (written with the `gguf` package) and fetch plans for them.

Most storage tests need a valid GGUF but not a model llama.cpp can run: a few hundred
KiB with `blk.N.*` tensors is enough to exercise header parsing, layer ranges, chunked
fetches, verification and every fault path in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import blake3
import numpy as np

from tiers.base import BlobPlan


def write_tiny_gguf(path: Path, *, blocks: int = 4, width: int = 64, vocab: int = 300,
                    chat_template: str | None = "{{ messages }}", seed: int = 0) -> Path:
    """A llama-shaped GGUF: token embeddings, `blocks` layers of F32/F16 tensors, output."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-{seed}")
    w.add_context_length(256)
    w.add_block_count(blocks)
    w.add_embedding_length(width)
    w.add_file_type(1)
    w.add_token_list([f"tok{i}".encode() for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, width), dtype=np.float32))
    for i in range(blocks):
        w.add_tensor(f"blk.{i}.attn_q.weight",
                     rng.standard_normal((width, width)).astype(np.float16))
        w.add_tensor(f"blk.{i}.ffn_up.weight",
                     rng.standard_normal((width * 2, width), dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def chunk_digests(data: bytes, chunk_size: int) -> tuple[str, ...]:
    return tuple(digest(data[i:i + chunk_size]) for i in range(0, len(data), chunk_size))


def plan_for(url: str, data: bytes, chunk_size: int, *, per_chunk: bool = True,
             order: tuple[int, ...] | None = None, name: str = "") -> BlobPlan:
    """The plan a manifest would give for raw `data` stored at `url`."""
    from tiers.errors import CorruptModel
    from tiers.gguf_header import NeedMore, parse

    try:
        head = max(1, -(-parse(data).data_offset // chunk_size))
    except (CorruptModel, NeedMore):     # fault tests plan bytes that are not a GGUF
        head = 1
    return BlobPlan(url=url, size=len(data), digest=digest(data), chunk_size=chunk_size,
                    chunk_digests=chunk_digests(data, chunk_size) if per_chunk else None,
                    order=order, header_chunks=head, name=name or url)


def zstd_frames(data: bytes, chunk_size: int) -> tuple[bytes, tuple[int, ...]]:
    """One zstd frame per chunk, concatenated, and the frame offsets (n + 1 entries)."""
    import zstandard

    comp = zstandard.ZstdCompressor(level=3)
    frames, offsets, pos = [], [0], 0
    for i in range(0, len(data), chunk_size):
        frame = comp.compress(data[i:i + chunk_size])
        frames.append(frame)
        pos += len(frame)
        offsets.append(pos)
    return b"".join(frames), tuple(offsets)
