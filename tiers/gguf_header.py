"""Read a GGUF header from the first bytes of a blob, without the rest of the file.

The loader fetches the header before the weights so the server can describe the model
(architecture, context length, chat template) while tensors still stream. The `gguf`
package's reader needs the whole file, so this is a small parser of the three header
sections (fixed fields, key/values, tensor infos). Arrays are skipped without being
decoded unless they are needed, which keeps a 262k-token vocabulary cheap.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from tiers.errors import CorruptModel

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
FIRST_READ = 1 << 20

# GGUF metadata value types -> struct format (strings and arrays handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: (elements per block, bytes per block), from ggml's type traits.
GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
    8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144),
    13: (256, 176), 14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74),
    18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}

# llama.cpp's LLAMA_FTYPE values -> the names users know.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4",
}


class NeedMore(Exception):
    """The buffer ended inside the header; `needed` is a size that will get further."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int          # absolute offset in the file
    size: int


@dataclass(frozen=True)
class GGUFHeader:
    """What a server needs to know about a model before its weights arrive."""

    version: int
    architecture: str
    file_type: str | None
    context_length: int | None
    block_count: int | None
    chat_template: str | None
    name: str | None
    alignment: int
    header_size: int               # bytes before the tensor infos end
    data_offset: int               # start of tensor data (aligned)
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, Any] = field(default_factory=dict)  # scalars and strings only

    @property
    def data_end(self) -> int:
        return max((t.offset + t.size for t in self.tensors), default=self.data_offset)

    def layer_ranges(self) -> dict[str, tuple[int, int]]:
        """'blk.N' -> [start, end) of its tensors; 'other' covers the non-layer tensors
        as one span (embeddings, output norm), which may enclose layers."""
        spans: dict[str, tuple[int, int]] = {}
        for t in self.tensors:
            parts = t.name.split(".")
            key = f"blk.{parts[1]}" if parts[0] == "blk" and len(parts) > 2 else "other"
            lo, hi = spans.get(key, (t.offset, t.offset + t.size))
            spans[key] = (min(lo, t.offset), max(hi, t.offset + t.size))
        return spans

    def layer_bytes(self) -> list[int]:
        """Tensor bytes of each block, in block order (what VRAM placement needs)."""
        sizes: dict[int, int] = {}
        for t in self.tensors:
            parts = t.name.split(".")
            if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
                sizes[int(parts[1])] = sizes.get(int(parts[1]), 0) + t.size
        return [sizes[i] for i in sorted(sizes)]

    def summary(self) -> dict[str, Any]:
        """JSON-able digest of the header for manifests and disk-tier metadata."""
        return {
            "architecture": self.architecture, "file_type": self.file_type,
            "context_length": self.context_length, "block_count": self.block_count,
            "data_offset": self.data_offset, "header_size": self.header_size,
            "name": self.name,
            "layers": {k: list(v) for k, v in sorted(self.layer_ranges().items())},
        }


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    if ggml_type not in GGML_BLOCKS:
        raise CorruptModel(f"unknown ggml tensor type {ggml_type}")
    block, nbytes = GGML_BLOCKS[ggml_type]
    count = 1
    for d in shape:
        count *= d
    if count % block:
        raise CorruptModel(f"tensor of {count} elements is not whole blocks of {block}")
    return count // block * nbytes


class _Cursor:
    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            # What is missing, and a first read's worth for the records after it: the
            # parse resumes (HeaderParser), so a short read costs a round trip, not a
            # parse, and doubling would only fetch bytes past the header.
            raise NeedMore(end + FIRST_READ)
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise CorruptModel(f"GGUF string length {n} is not plausible")
        return bytes(self.take(n)).decode("utf-8", errors="replace")


def _skip_strings(cur: _Cursor, count: int) -> None:
    """Skip an array of strings (a vocabulary: ~262k entries) in one tight loop."""
    buf, start, end = cur.buf, cur.pos, len(cur.buf)
    pos = start
    unpack_from = struct.Struct("<Q").unpack_from
    for i in range(count):  # noqa: B007 - `i` is read after the loop when it breaks
        if pos + 8 > end:
            break
        pos += 8 + unpack_from(buf, pos)[0]
    else:
        if pos <= end:
            cur.pos = pos
            return
        i = count
    # Out of bytes: ask for an estimate of the whole array (so one more read does it)
    # plus room for the tensor table, instead of doubling through many passes.
    per_item = (pos - start) / max(i, 1)
    raise NeedMore(int(pos + (count - i) * per_item * 1.25) + (1 << 20))


def _value(cur: _Cursor, vtype: int, keep: bool) -> Any:
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype])
    if vtype == _STRING:
        return cur.string()
    if vtype == _ARRAY:
        etype, count = cur.unpack("<I"), cur.unpack("<Q")
        if etype in _SCALARS:
            cur.take(struct.calcsize(_SCALARS[etype]) * count)   # skipped, not decoded
        elif etype == _STRING:
            _skip_strings(cur, count)
        else:
            for _ in range(count):
                _value(cur, etype, keep=False)
        return None
    raise CorruptModel(f"unknown GGUF value type {vtype}")


class HeaderParser:
    """A header parse that resumes where its bytes ran out, for headers read in pieces.

    A 262k-token vocabulary's header is 6.5 MB: read 1 MiB first, then as much as each
    NeedMore asks, and parsed from the start every time, it was parsed three times (the
    estimate of the vocabulary's end fell short of the arrays after it). This parser
    keeps every record it finished (the fixed fields, each key/value, each tensor info)
    and starts the next `feed` at the first one it could not finish, so each byte is
    parsed about once, however many reads the header takes.
    """

    def __init__(self, file_size: int | None = None, first: int = FIRST_READ) -> None:
        self.file_size = file_size
        self._pos = 0                    # where the first unfinished record starts
        self._counts: tuple[int, int, int] | None = None   # version, tensors, key/values
        self._meta: dict[str, Any] = {}
        self._kv_done = 0
        self._infos: list[tuple[str, tuple[int, ...], int, int]] = []
        self._read = b""                 # the prefix `read` has fetched so far
        self._want = first               # how long the next prefix should be

    def read(self, read: Callable[[int, int], bytes],
             available: int | None = None) -> GGUFHeader | None:
        """Fetch the prefix with `read(start, end)` (each read continuing where the last
        ended, as long as the last NeedMore asked) and parse on. `available`: how many
        bytes can be read now (a blob still landing); None: up to the file size, or
        until `read` returns nothing. The header, or None when it needs bytes beyond
        `available` (call again once more has landed). Raises CorruptModel when the
        file ends inside the header."""
        limit = available if available is not None else self.file_size
        while True:
            got = len(self._read)
            want = self._want if limit is None else min(self._want, limit)
            if want <= got:
                if self.file_size is not None and got >= self.file_size:
                    raise CorruptModel(f"GGUF header is truncated at byte {got}")
                return None
            more = read(got, want)
            if not more:
                raise CorruptModel(f"GGUF header is truncated at byte {got}")
            self._read += more
            try:
                header = self.feed(self._read)
            except NeedMore as need:
                self._want = max(need.needed, self._want)
                continue
            self._read = b""
            return header

    def feed(self, buf: bytes | memoryview) -> GGUFHeader:
        """Parse on from the last finished record. `buf` is the file's prefix, at least
        as long as the one fed before. Raises NeedMore when it is too short, CorruptModel
        when the bytes are not a GGUF or describe tensors beyond the file size."""
        cur = _Cursor(buf)
        cur.pos = self._pos
        if self._counts is None:
            self._counts = _preamble(cur)
            self._pos = cur.pos
        version, n_tensors, n_kv = self._counts
        while self._kv_done < n_kv:
            key = cur.string()
            value = _value(cur, cur.unpack("<I"), keep=True)
            if value is not None:
                self._meta[key] = value
            self._kv_done += 1
            self._pos = cur.pos
        while len(self._infos) < n_tensors:
            name = cur.string()
            n_dims = cur.unpack("<I")
            if n_dims > 8:
                raise CorruptModel(f"tensor {name} has {n_dims} dimensions")
            shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
            self._infos.append((name, shape, cur.unpack("<I"), cur.unpack("<Q")))
            self._pos = cur.pos
        return _header(version, self._meta, self._infos, cur.pos, self.file_size)


def _preamble(cur: _Cursor) -> tuple[int, int, int]:
    """Magic, version and the two counts: (version, tensors, key/values)."""
    if bytes(cur.take(4)) != MAGIC:
        raise CorruptModel("not a GGUF file (bad magic)")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise CorruptModel(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    if n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise CorruptModel("GGUF counts are not plausible")
    return version, n_tensors, n_kv


def _header(version: int, meta: dict[str, Any], infos: list[tuple[str, tuple[int, ...], int, int]],
            header_size: int, file_size: int | None) -> GGUFHeader:
    alignment = int(meta.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_offset = (header_size + alignment - 1) // alignment * alignment
    tensors = tuple(TensorInfo(name, shape, gtype, data_offset + rel,
                               tensor_nbytes(gtype, shape))
                    for name, shape, gtype, rel in infos)
    arch = str(meta.get("general.architecture", "unknown"))
    ftype = meta.get("general.file_type")
    header = GGUFHeader(
        version=version, architecture=arch,
        file_type=FILE_TYPES.get(ftype, str(ftype)) if ftype is not None else None,
        context_length=_int(meta.get(f"{arch}.context_length")),
        block_count=_int(meta.get(f"{arch}.block_count")),
        chat_template=meta.get("tokenizer.chat_template"),
        name=meta.get("general.name"), alignment=alignment, header_size=header_size,
        data_offset=data_offset, tensors=tensors, metadata=dict(meta))
    if file_size is not None and header.data_end > file_size:
        raise CorruptModel(f"GGUF is truncated: tensors end at byte {header.data_end}, "
                           f"file has {file_size}")
    return header


def parse(buf: bytes | memoryview, file_size: int | None = None) -> GGUFHeader:
    """Parse a header from a prefix of the file in one go.

    Raises NeedMore when the prefix is too short, CorruptModel when the bytes are not a
    GGUF or describe tensors beyond `file_size`.
    """
    return HeaderParser(file_size).feed(buf)


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def read_header(read: Callable[[int, int], bytes], file_size: int | None = None,
                first: int = FIRST_READ) -> GGUFHeader:
    """Parse the header using `read(start, end)`, fetching more until it fits.

    `read` is a ranged read (remote or local); it may return fewer bytes at end of file.
    Each read continues where the last ended, and the parse resumes (HeaderParser).
    """
    header = HeaderParser(file_size, first).read(read)
    assert header is not None, "with nothing `available` capping it, a read ends or fails"
    return header


def parse_whole(buf: bytes | memoryview, file_size: int | None = None) -> GGUFHeader:
    """Parse a header that `buf` must hold whole (a file's mapping, the header chunks a
    manifest verified): one pass, where `read_header`'s 1 MiB first read of a 262k-token
    vocabulary's header (6.5 MB) ends inside the vocabulary twice and parses it three
    times (0.11 against 0.065 CPU s of GIL-bound Python, which on a cold start runs
    beside the llama.cpp build and the fetch). A `buf` that ends inside the header is a
    truncated GGUF: CorruptModel, never NeedMore.
    """
    failure: CorruptModel
    try:
        return parse(buf, file_size)
    except CorruptModel as exc:
        # A new error: the caught one's traceback holds views of `buf` (a mapping would
        # not close while they live).
        failure = CorruptModel(str(exc))
    except NeedMore:
        failure = CorruptModel(f"GGUF header is truncated at byte {len(buf)}")
    raise failure


def read_header_file(path: str) -> GGUFHeader:
    """Header of a local file (push, inspect, tier hits), parsed in one pass over the
    file's mapping (`parse_whole`)."""
    size = os.path.getsize(path)
    if size == 0:
        raise CorruptModel("GGUF header is truncated at byte 0")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            return parse_whole(view, size)
        finally:
            view.release()       # no view outlives the parse: the mapping can close
