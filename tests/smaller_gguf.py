"""A real, smaller model of the same family: Gemma with only its first few blocks.

What a manifest `variant` stands for (the same model, fewer bytes) without downloading
a second quantization: the tensors of the dropped blocks are removed from the tensor
table and the data, `<arch>.block_count` is rewritten, every offset recomputed. The
result loads and decodes in llama.cpp (its text is worse, which no test relies on).
"""

from __future__ import annotations

import struct
from pathlib import Path

from tiers.gguf_header import read_header_file

GGUF_TYPE_UINT32 = 4


def _block_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blk" and parts[1].isdigit() else None


def with_fewer_blocks(src: Path, dest: Path, keep: int) -> Path:
    """Write `src` with only blocks 0..keep-1 to `dest`; returns `dest`."""
    header = read_header_file(str(src))
    data = src.read_bytes()
    kept = [t for t in header.tensors if (_block_of(t.name) or 0) < keep]

    def info(name: str, shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
        raw = name.encode()
        return (struct.pack("<Q", len(raw)) + raw + struct.pack("<I", len(shape))
                + b"".join(struct.pack("<Q", d) for d in shape)
                + struct.pack("<IQ", ggml_type, offset))

    infos_start = header.header_size - sum(len(info(t.name, t.shape, t.ggml_type, 0))
                                           for t in header.tensors)
    kv = bytearray(data[:infos_start])
    struct.pack_into("<Q", kv, 8, len(kept))                 # n_tensors
    key = f"{header.architecture}.block_count".encode()
    at = kv.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<I", kv, at)[0] == GGUF_TYPE_UINT32
    struct.pack_into("<I", kv, at + 4, keep)

    align = header.alignment
    table, blobs, offset = b"", [], 0
    for t in kept:
        table += info(t.name, t.shape, t.ggml_type, offset)
        blob = data[t.offset:t.offset + t.size]
        pad = (-len(blob)) % align
        blobs.append(blob + b"\0" * pad)
        offset += len(blob) + pad
    head = bytes(kv) + table
    head += b"\0" * ((-len(head)) % align)
    dest.write_bytes(head + b"".join(blobs))
    return dest
