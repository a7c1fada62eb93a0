"""The GGUF header reader against files written by the `gguf` package and the real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_gguf import write_tiny_gguf
from tiers.errors import CorruptModel
from tiers.gguf_header import NeedMore, parse, parse_whole, read_header, read_header_file


def reference(path: Path) -> dict[str, tuple[int, int]]:
    """Offsets and sizes as the official `gguf` reader computes them."""
    from gguf import GGUFReader

    return {t.name: (int(t.data_offset), int(t.n_bytes)) for t in GGUFReader(str(path)).tensors}


def test_tiny_header_matches_the_official_reader(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf", blocks=3)
    h = read_header_file(str(path))
    assert (h.architecture, h.block_count, h.context_length) == ("llama", 3, 256)
    assert h.file_type == "F16" and h.chat_template == "{{ messages }}"
    assert h.name == "tiny-0"
    assert {t.name: (t.offset, t.size) for t in h.tensors} == reference(path)
    assert h.data_end == path.stat().st_size
    ranges = h.layer_ranges()
    assert sorted(ranges) == ["blk.0", "blk.1", "blk.2", "other"]
    assert ranges["blk.0"][1] <= ranges["blk.1"][0]
    assert len(h.layer_bytes()) == 3 and all(b > 0 for b in h.layer_bytes())
    summary = h.summary()
    assert summary["layers"]["blk.2"] == list(ranges["blk.2"])
    assert summary["data_offset"] == h.data_offset


def test_no_chat_template(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf", chat_template=None)
    assert read_header_file(str(path)).chat_template is None


def test_a_header_larger_than_the_first_read_is_fetched_in_more_reads(tmp_path: Path) -> None:
    data = write_tiny_gguf(tmp_path / "t.gguf", vocab=20_000).read_bytes()
    reads: list[tuple[int, int]] = []

    def read(start: int, end: int) -> bytes:
        reads.append((start, end))
        return data[start:end]

    h = read_header(read, len(data), first=1024)
    assert h.data_offset == parse(data).data_offset
    assert len(reads) >= 2 and reads[0] == (0, 1024)
    assert all(a == b for (_, b), (a, _) in zip(reads, reads[1:]))   # contiguous, no refetch
    with pytest.raises(NeedMore):
        parse(data[:1024])


def test_a_header_fed_in_pieces_parses_each_record_about_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HeaderParser resumes at the first record it could not finish: a short prefix
    costs that one record again, not a parse of everything before it."""
    import struct

    import tiers.gguf_header as gguf_header

    data = write_tiny_gguf(tmp_path / "t.gguf", vocab=20_000).read_bytes()
    whole = parse(data)
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    values: list[int] = []
    real_value = gguf_header._value

    def counted(cur: object, vtype: int, keep: bool) -> object:
        values.append(vtype)
        return real_value(cur, vtype, keep)      # type: ignore[arg-type]

    monkeypatch.setattr(gguf_header, "_value", counted)
    parser = gguf_header.HeaderParser(len(data))
    cuts = range(64, whole.header_size, whole.header_size // 40)
    for cut in cuts:
        with pytest.raises(NeedMore) as need:
            parser.feed(data[:cut])
        # What is missing plus one first read, not double the prefix.
        assert cut < need.value.needed <= whole.header_size + gguf_header.FIRST_READ
    assert parser.feed(data) == whole
    assert n_kv <= len(values) <= n_kv + len(cuts)           # one retry per short prefix


def test_bad_magic_and_truncation(tmp_path: Path) -> None:
    data = write_tiny_gguf(tmp_path / "t.gguf").read_bytes()
    with pytest.raises(CorruptModel, match="magic"):
        parse(b"GGML" + data[4:])
    with pytest.raises(CorruptModel, match="truncated"):
        read_header(lambda s, e: data[:300][s:e], 300)          # ends inside the header
    with pytest.raises(CorruptModel, match="truncated"):
        read_header(lambda s, e: data[:300][s:e], None)         # object shorter than told
    with pytest.raises(CorruptModel, match="tensors end at"):
        parse(data, file_size=len(data) - 1)                    # tensor data cut short
    with pytest.raises(CorruptModel, match="header is truncated at byte 300"):
        parse_whole(data[:300], len(data))                      # a whole header, it said
    assert parse_whole(data, len(data)) == parse(data)


def test_the_real_gemma_header(gemma_path: Path) -> None:
    h = read_header_file(str(gemma_path))
    assert h.architecture == "gemma3" and h.file_type == "Q4_K_M"
    assert h.block_count == 18 and h.context_length == 32768
    assert h.chat_template is None                 # this GGUF ships without one
    assert h.data_end == gemma_path.stat().st_size
    assert len(h.layer_bytes()) == 18
    with open(gemma_path, "rb") as f:
        prefix = f.read(h.data_offset)
    assert parse(prefix).tensors == h.tensors


def test_a_local_file_is_parsed_in_one_pass_over_its_mapping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tiers.gguf_header as gguf_header

    path = write_tiny_gguf(tmp_path / "t.gguf", vocab=20_000)
    passes: list[int] = []
    real_parse = gguf_header.parse

    def counted(buf: bytes | memoryview, file_size: int | None = None) -> object:
        passes.append(len(buf))
        return real_parse(buf, file_size)

    monkeypatch.setattr(gguf_header, "parse", counted)
    h = read_header_file(str(path))
    assert passes == [path.stat().st_size]             # the whole file, once
    assert {t.name: (t.offset, t.size) for t in h.tensors} == reference(path)


def test_a_local_file_that_is_not_a_whole_gguf_is_refused(tmp_path: Path) -> None:
    data = write_tiny_gguf(tmp_path / "t.gguf", vocab=20_000).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:5000])                       # ends inside the vocabulary
    with pytest.raises(CorruptModel, match="truncated at byte 5000"):
        read_header_file(str(cut))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + data[4:])
    with pytest.raises(CorruptModel, match="magic"):
        read_header_file(str(bad))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(CorruptModel, match="truncated at byte 0"):
        read_header_file(str(empty))
    data_cut = tmp_path / "short.gguf"
    data_cut.write_bytes(data[:-1])                    # header whole, tensor data short
    with pytest.raises(CorruptModel, match="tensors end at"):
        read_header_file(str(data_cut))
