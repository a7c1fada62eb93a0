"""Manifests: the small JSON document that makes a blob in a registry a model.

A manifest is everything a cold instance needs before it fetches one tensor byte: the
digest of the whole GGUF and of every chunk (so each ranged read is verified as it
lands), where each compressed frame starts (so zstd blobs can still be read in parallel
ranges), and the GGUF summary (so /v1/models and VRAM placement work from the manifest
alone). `strato push` writes it last, which is why a reader that finds one can trust
that the blob it names is complete.

Schema v1 (JSON, validated with `SCHEMA` on every load):

    {"schema": 1, "name": "gemma3", "tag": "270m",
     "digest": "blake3:<hex of the raw GGUF>", "size": 253115936,
     "blob": "blake3:<hex of the stored object>",   # == digest unless compressed
     "chunk_size": 8388608, "chunks": ["<hex>", ...], # BLAKE3 of each raw chunk
     "compression": "none" | "zstd",
     "frame_offsets": [0, ...],                       # zstd: n_chunks + 1 offsets
     "gguf": {"architecture", "file_type", "context_length", "block_count",
              "tensor_data_offset", "layers": [[[start, end], ...], ...],
              "other": [[start, end], ...]},
     "variants": [{"tag", "file_type", "size", "digest"}],   # optional
     "signature": {"algorithm": "ed25519", "public_key", "value"}}  # optional
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

from core.catalog import schema_check
from core.errors import InvalidManifest
from tiers.base import BlobPlan

SCHEMA_VERSION = 1
Range = tuple[int, int]  # half-open [start, end) in raw file offsets
ALIGN_GAP = 256  # bytes of padding tolerated inside one merged span

_HEX = "^[0-9a-f]{64}$"
_DIGEST = "^blake3:[0-9a-f]{64}$"
_RANGE = {"type": "array", "items": {"type": "integer", "minimum": 0},
          "minItems": 2, "maxItems": 2}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "strato manifest v1",
    "type": "object",
    "required": ["schema", "name", "tag", "digest", "size", "chunk_size", "chunks",
                 "compression", "gguf"],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "minLength": 1, "maxLength": 1024},
        "tag": {"type": "string", "minLength": 1, "maxLength": 128},
        "digest": {"type": "string", "pattern": _DIGEST},
        "blob": {"type": "string", "pattern": _DIGEST},
        "size": {"type": "integer", "minimum": 1},
        "chunk_size": {"type": "integer", "minimum": 4096},
        "chunks": {"type": "array", "items": {"type": "string", "pattern": _HEX}},
        "compression": {"enum": ["none", "zstd"]},
        "frame_offsets": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "gguf": {
            "type": "object",
            "required": ["architecture", "block_count", "tensor_data_offset", "layers",
                         "other"],
            "properties": {
                "architecture": {"type": "string"},
                "file_type": {"type": ["string", "null"]},
                "context_length": {"type": ["integer", "null"], "minimum": 0},
                "block_count": {"type": "integer", "minimum": 0},
                "tensor_data_offset": {"type": "integer", "minimum": 0},
                "layers": {"type": "array", "items": {"type": "array", "items": _RANGE}},
                "other": {"type": "array", "items": _RANGE},
            },
        },
        "variants": {"type": "array", "items": {
            "type": "object", "required": ["tag", "size"],
            "properties": {"tag": {"type": "string"}, "file_type": {"type": ["string", "null"]},
                           "size": {"type": "integer", "minimum": 1},
                           "digest": {"type": "string", "pattern": _DIGEST}}}},
        "signature": {"type": ["object", "null"],
                      "required": ["algorithm", "public_key", "value"],
                      "properties": {"algorithm": {"const": "ed25519"},
                                     "public_key": {"type": "string"},
                                     "value": {"type": "string"}}},
        "created": {"type": "string"},
    },
}
schema_check.check_schema(SCHEMA)    # a keyword it does not interpret fails here


@dataclass(frozen=True)
class GGUFSummary:
    """What the GGUF header says, reduced to what serving and placement decide on."""

    architecture: str
    file_type: str | None
    context_length: int | None
    block_count: int
    tensor_data_offset: int
    layers: tuple[tuple[Range, ...], ...]  # layers[n]: merged byte ranges of blk.n.*
    other: tuple[Range, ...]               # token_embd, output_norm, output, ...

    def layer_bytes(self) -> list[int]:
        """Bytes of each layer: what VRAM placement sums against free device memory."""
        return [sum(end - start for start, end in ranges) for ranges in self.layers]

    def other_bytes(self) -> int:
        return sum(end - start for start, end in self.other)


@dataclass(frozen=True)
class Variant:
    """Another tag of the same model, typically a smaller quantization (OOM fallback)."""

    tag: str
    size: int
    file_type: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class Signature:
    algorithm: str
    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    value: str       # base64 of the 64-byte signature over `signing_payload()`


@dataclass(frozen=True)
class Manifest:
    name: str
    tag: str
    digest: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...]
    gguf: GGUFSummary
    compression: str = "none"
    frame_offsets: tuple[int, ...] = ()
    blob: str | None = None
    variants: tuple[Variant, ...] = ()
    signature: Signature | None = None
    created: str | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def blob_digest(self) -> str:
        """Digest of the stored object: equal to `digest` unless compressed."""
        return self.blob or self.digest

    @property
    def blob_key(self) -> str:
        return f"blobs/blake3/{self.blob_digest.split(':', 1)[1]}"

    @property
    def stored_size(self) -> int:
        return self.frame_offsets[-1] if self.compression == "zstd" else self.size

    def chunk_range(self, index: int) -> Range:
        """Raw byte range of chunk `index`: where its bytes go in the GGUF file."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def stored_range(self, index: int) -> Range:
        """Byte range of chunk `index` in the stored blob: what a ranged read asks for."""
        if self.compression == "zstd":
            return self.frame_offsets[index], self.frame_offsets[index + 1]
        return self.chunk_range(index)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "name": self.name, "tag": self.tag,
            "digest": self.digest, "blob": self.blob_digest, "size": self.size,
            "chunk_size": self.chunk_size, "chunks": list(self.chunks),
            "compression": self.compression,
            "gguf": {
                "architecture": self.gguf.architecture, "file_type": self.gguf.file_type,
                "context_length": self.gguf.context_length,
                "block_count": self.gguf.block_count,
                "tensor_data_offset": self.gguf.tensor_data_offset,
                "layers": [[list(r) for r in ranges] for ranges in self.gguf.layers],
                "other": [list(r) for r in self.gguf.other],
            },
        }
        if self.compression == "zstd":
            data["frame_offsets"] = list(self.frame_offsets)
        if self.variants:
            data["variants"] = [{k: v for k, v in vars(x).items() if v is not None}
                                for x in self.variants]
        if self.signature is not None:
            data["signature"] = vars(self.signature).copy()
        if self.created is not None:
            data["created"] = self.created
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode()

    def signing_payload(self) -> bytes:
        """Canonical bytes an Ed25519 signature covers: everything but the signature."""
        data = self.to_dict()
        data.pop("signature", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def with_signature(self, signature: Signature | None) -> Manifest:
        return replace(self, signature=signature)


def loads(raw: bytes | str, *, source: str = "manifest") -> Manifest:
    """Parse and validate manifest JSON; InvalidManifest names `source` and the reason."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{source}: not JSON ({exc})") from None
    return from_dict(data, source=source)


def from_dict(data: Any, *, source: str = "manifest") -> Manifest:
    try:
        schema_check.validate(data, SCHEMA)
    except schema_check.SchemaViolation as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidManifest(f"{source}: schema v{SCHEMA_VERSION} violated at {where}: "
                              f"{exc.message}") from None
    g = data["gguf"]
    sig = data.get("signature")
    manifest = Manifest(
        name=data["name"], tag=data["tag"], digest=data["digest"], size=data["size"],
        chunk_size=data["chunk_size"], chunks=tuple(data["chunks"]),
        compression=data["compression"], frame_offsets=tuple(data.get("frame_offsets", ())),
        blob=data.get("blob"), created=data.get("created"),
        gguf=GGUFSummary(
            architecture=g["architecture"], file_type=g.get("file_type"),
            context_length=g.get("context_length"), block_count=g["block_count"],
            tensor_data_offset=g["tensor_data_offset"],
            layers=tuple(tuple((r[0], r[1]) for r in ranges) for ranges in g["layers"]),
            other=tuple((r[0], r[1]) for r in g["other"])),
        variants=tuple(Variant(tag=v["tag"], size=v["size"], file_type=v.get("file_type"),
                               digest=v.get("digest")) for v in data.get("variants", ())),
        signature=Signature(**sig) if sig else None,
    )
    check_consistent(manifest, source=source)
    return manifest


def check_consistent(m: Manifest, *, source: str = "manifest") -> None:
    """Cross-field rules JSON Schema cannot say; a manifest breaking one is refused."""
    def bad(reason: str) -> InvalidManifest:
        return InvalidManifest(f"{source}: {reason}")

    expected = math.ceil(m.size / m.chunk_size)
    if len(m.chunks) != expected:
        raise bad(f"{len(m.chunks)} chunk digests for {m.size} bytes in chunks of "
                  f"{m.chunk_size} (expected {expected})")
    if m.compression == "zstd":
        offs = m.frame_offsets
        if len(offs) != expected + 1 or offs[0] != 0:
            raise bad(f"zstd needs {expected + 1} frame offsets starting at 0, "
                      f"got {len(offs)}")
        if any(b <= a for a, b in zip(offs, offs[1:])):
            raise bad("frame offsets must increase strictly")
    elif m.frame_offsets:
        raise bad("frame_offsets given for an uncompressed blob")
    elif m.blob not in (None, m.digest):
        raise bad("an uncompressed blob must have the manifest's digest")
    g = m.gguf
    if g.tensor_data_offset > m.size:
        raise bad(f"tensor data offset {g.tensor_data_offset} beyond size {m.size}")
    if len(g.layers) != g.block_count:
        raise bad(f"{len(g.layers)} layer ranges for block_count {g.block_count}")
    for start, end in (r for ranges in g.layers for r in ranges):
        if not g.tensor_data_offset <= start <= end <= m.size:
            raise bad(f"layer range [{start}, {end}) outside the tensor data")
    for start, end in g.other:
        if not g.tensor_data_offset <= start <= end <= m.size:
            raise bad(f"tensor range [{start}, {end}) outside the tensor data")


def chunk_count(size: int, chunk_size: int) -> int:
    return math.ceil(size / chunk_size)


def chunks_of(ranges: Iterable[Range], chunk_size: int) -> list[int]:
    """Chunk indices covering `ranges`, in the order the ranges are given."""
    out: list[int] = []
    for start, end in ranges:
        if end <= start:
            continue
        out.extend(range(start // chunk_size, (end - 1) // chunk_size + 1))
    return out


def layer_order(m: Manifest) -> list[int]:
    """Every chunk index once, in the order a progressive load wants them.

    Header first (metadata, chat template and tensor table make the model describable),
    then tensors that sit before the first layer (the token embedding), then blk.0,
    blk.1, ... so the first GPU layers are complete early, then the remaining non-layer
    tensors (output norm and head), then anything no range covered (alignment padding).
    """
    g = m.gguf
    first_layer = min((s for ranges in g.layers for s, _ in ranges), default=m.size)
    plan: list[Range] = [(0, max(g.tensor_data_offset, 1))]
    plan += [r for r in sorted(g.other) if r[0] < first_layer]
    for ranges in g.layers:
        plan += list(ranges)
    plan += [r for r in sorted(g.other) if r[0] >= first_layer]
    plan.append((0, m.size))  # sweeps up every chunk not yet named
    seen: set[int] = set()
    order: list[int] = []
    for index in chunks_of(plan, m.chunk_size):
        if index not in seen:
            seen.add(index)
            order.append(index)
    return order


def merge_ranges(ranges: Iterable[Range], gap: int = 0) -> tuple[Range, ...]:
    """Sort and merge ranges that overlap or lie within `gap` bytes of each other.

    GGUF pads each tensor to its alignment (32 bytes by default), so a layer's tensors
    are separated by a few padding bytes; merging across them keeps a layer one span.
    """
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's name and absolute byte range: the input `summarize` groups by layer."""

    name: str
    start: int
    end: int


def summarize(architecture: str, file_type: str | None, context_length: int | None,
              block_count: int, tensor_data_offset: int,
              tensors: Iterable[TensorSpan]) -> GGUFSummary:
    """Group a GGUF tensor table into per-layer ranges (`blk.N.*`) and the rest.

    Ranges closer than `ALIGN_GAP` are merged, so alignment padding between a layer's
    tensors does not split it into many spans.
    """
    spans = sorted(tensors, key=lambda t: t.start)
    layers: dict[int, list[Range]] = {n: [] for n in range(block_count)}
    other: list[Range] = []
    for t in spans:
        parts = t.name.split(".")
        if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit():
            layers.setdefault(int(parts[1]), []).append((t.start, t.end))
        else:
            other.append((t.start, t.end))
    count = max(block_count, max(layers, default=-1) + 1)
    return GGUFSummary(
        architecture=architecture, file_type=file_type, context_length=context_length,
        block_count=count, tensor_data_offset=tensor_data_offset,
        layers=tuple(merge_ranges(layers.get(n, []), ALIGN_GAP) for n in range(count)),
        other=merge_ranges(other, ALIGN_GAP))


def header_summary(header: Any) -> GGUFSummary:
    """GGUFSummary of a parsed `tiers.gguf_header.GGUFHeader` (push, plain-URI loads)."""
    return summarize(
        header.architecture, header.file_type, header.context_length,
        header.block_count or 0, header.data_offset,
        (TensorSpan(t.name, t.offset, t.offset + t.size) for t in header.tensors))


def to_blob_plan(m: Manifest, root: str) -> BlobPlan:
    """The loader's fetch plan for this manifest's blob under registry `root`.

    Chunks come in `layer_order`, each verified against its digest as it lands; the
    GGUF summary rides along as tier metadata so `strato list` and placement can read
    it from a disk tier without opening the blob.
    """
    return BlobPlan(
        url=f"{root.rstrip('/')}/{m.blob_key}", size=m.size, digest=m.digest,
        chunk_size=m.chunk_size, chunk_digests=m.chunks, compression=m.compression,
        frame_offsets=m.frame_offsets if m.compression == "zstd" else None,
        order=tuple(layer_order(m)), name=f"{m.name}:{m.tag}",
        header_chunks=max(1, math.ceil(m.gguf.tensor_data_offset / m.chunk_size)),
        meta={"name": m.name, "tag": m.tag, "gguf": m.to_dict()["gguf"]})


__all__ = ["Manifest", "GGUFSummary", "Variant", "Signature", "TensorSpan", "InvalidManifest",
           "SCHEMA", "SCHEMA_VERSION", "loads", "from_dict", "check_consistent",
           "layer_order", "header_summary", "to_blob_plan", "chunks_of", "chunk_count", "merge_ranges", "summarize"]
