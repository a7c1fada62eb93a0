"""Manifests: schema v1 round trip, refusal of malformed or self-contradicting documents,
the GGUF summary of real files, and the layer-ordered fetch plan."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from core.catalog import manifest as mf
from core.catalog.manifest import GGUFSummary, InvalidManifest, Manifest, TensorSpan, Variant

HEX = [f"{i:064x}" for i in range(1, 40)]


def make(size: int = 10_000, chunk: int = 4096, **kw) -> Manifest:
    n = -(-size // chunk)
    gguf = GGUFSummary("llama", "Q4_K_M", 2048, 2, 1000,
                       layers=(((4000, 6000),), ((6000, 9000),)),
                       other=((1000, 4000), (9000, 9500)))
    base = Manifest(name="tiny", tag="v1", digest=f"blake3:{HEX[0]}", size=size,
                    chunk_size=chunk, chunks=tuple(HEX[1:1 + n]), gguf=gguf)
    return replace(base, **kw)


def test_round_trip_through_json_and_schema():
    m = make(variants=(Variant("q2", 5000, "Q2_K", f"blake3:{HEX[9]}"),),
             created="2026-11-22T00:00:00Z")
    again = mf.loads(m.to_json())
    assert again == replace(m, blob=m.digest)
    doc = json.loads(m.to_json())
    assert doc["schema"] == 1 and doc["digest"].startswith("blake3:")
    assert doc["gguf"]["layers"] == [[[4000, 6000]], [[6000, 9000]]]


def test_zstd_manifest_maps_chunks_to_frames():
    m = make(compression="zstd", frame_offsets=(0, 100, 250, 300),
             blob=f"blake3:{HEX[20]}")
    again = mf.loads(m.to_json())
    assert again.stored_range(1) == (100, 250)
    assert again.chunk_range(2) == (8192, 10_000)
    assert again.stored_size == 300
    assert again.blob_key == f"blobs/blake3/{HEX[20]}"


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.update(schema=2), "schema"),
    (lambda d: d.update(digest="sha256:" + HEX[0]), "digest"),
    (lambda d: d.update(size=-1), "size"),
    (lambda d: d["chunks"].__setitem__(0, "xyz"), "chunks/0"),
    (lambda d: d.update(compression="gzip"), "compression"),
    (lambda d: d.pop("gguf"), "(root)"),
    (lambda d: d["gguf"].update(layers=[[[1, 2, 3]]]), "gguf/layers/0/0"),
])
def test_schema_violations_name_the_field(mutate, where):
    doc = json.loads(make().to_json())
    mutate(doc)
    with pytest.raises(InvalidManifest) as info:
        mf.from_dict(doc, source="s3://r/manifests/tiny/v1.json")
    assert where in info.value.message
    assert "s3://r/manifests/tiny/v1.json" in info.value.message


@pytest.mark.parametrize("changes, reason", [
    (dict(chunks=tuple(HEX[1:3])), "chunk digests"),
    (dict(compression="zstd", frame_offsets=(0, 5, 9)), "frame offsets"),
    (dict(compression="zstd", frame_offsets=(0, 5, 5, 9)), "increase"),
    (dict(frame_offsets=(0, 1, 2, 3)), "uncompressed"),
    (dict(blob=f"blake3:{HEX[30]}"), "uncompressed blob"),
])
def test_inconsistent_manifests_are_refused(changes, reason):
    with pytest.raises(InvalidManifest, match=reason):
        mf.check_consistent(replace(make(), **changes))


def test_layer_ranges_outside_the_data_are_refused():
    bad = replace(make(), gguf=replace(make().gguf, layers=(((500, 900),), ((6000, 9000),))))
    with pytest.raises(InvalidManifest, match="outside"):
        mf.check_consistent(bad)
    with pytest.raises(InvalidManifest, match="block_count"):
        mf.check_consistent(replace(make(), gguf=replace(make().gguf, block_count=3)))


def test_not_json_is_refused():
    with pytest.raises(InvalidManifest, match="not JSON"):
        mf.loads(b"\x00garbage")


def test_layer_order_header_embeddings_layers_head_then_rest():
    # chunk 4096: header [0,1000) -> 0; embd [1000,4000) -> 0; blk.0 [4000,6000) -> 0,1;
    # blk.1 [6000,9000) -> 1,2; head [9000,9500) -> 2
    m = make(size=20_000)
    order = mf.layer_order(m)
    assert order == [0, 1, 2, 3, 4]
    assert sorted(order) == list(range(5))


def test_layer_order_puts_layers_before_head_even_when_head_is_first_in_file():
    g = GGUFSummary("llama", None, None, 3, 100,
                    layers=(((3000, 4000),), ((4000, 5000),), ((5000, 6000),)),
                    other=((100, 1000), (1000, 3000)))
    m = Manifest("x", "y", f"blake3:{HEX[0]}", 7000, 1000, tuple(HEX[1:8]), g)
    assert mf.layer_order(m) == [0, 1, 2, 3, 4, 5, 6]
    g2 = GGUFSummary("llama", None, None, 2, 100,
                     layers=(((5000, 6000),), ((1000, 2000),)), other=((6000, 7000),))
    m2 = Manifest("x", "y", f"blake3:{HEX[0]}", 7000, 1000, tuple(HEX[1:8]), g2)
    # blk.0 before blk.1 regardless of file position; head last; padding swept at end.
    assert mf.layer_order(m2) == [0, 5, 1, 6, 2, 3, 4]


def test_summarize_groups_tensors_by_layer_and_merges_padding():
    spans = [TensorSpan("token_embd.weight", 100, 1000),
             TensorSpan("blk.0.attn_q.weight", 1024, 2000),
             TensorSpan("blk.0.ffn_up.weight", 2016, 3000),   # 16 bytes of padding
             TensorSpan("blk.1.attn_q.weight", 3008, 4000),
             TensorSpan("output_norm.weight", 4032, 4100),
             TensorSpan("blk.1.ffn_up.weight", 5000, 6000)]  # split from its layer
    s = mf.summarize("llama", "F32", 128, 2, 96, spans)
    assert s.layers == (((1024, 3000),), ((3008, 4000), (5000, 6000)))
    assert s.other == ((100, 1000), (4032, 4100))
    assert s.layer_bytes() == [1976, 1992]
    assert s.other_bytes() == 968


def test_to_blob_plan_carries_digests_order_and_frames():
    m = make(compression="zstd", frame_offsets=(0, 10, 20, 30), blob=f"blake3:{HEX[20]}")
    plan = mf.to_blob_plan(m, "s3://reg/root/")
    assert plan.url == f"s3://reg/root/blobs/blake3/{HEX[20]}"
    assert plan.digest == HEX[0]
    assert plan.chunk_digests == tuple(HEX[1:4])
    assert plan.frame_offsets == (0, 10, 20, 30)
    assert plan.order == tuple(mf.layer_order(m))
    assert plan.meta["gguf"]["architecture"] == "llama"
    assert plan.name == "tiny:v1"


def write_tiny_gguf(path, n_layers: int = 2, arch: str = "llama") -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_file_type(0)
    w.add_tensor("token_embd.weight", np.ones((8, 32), np.float32))
    for n in range(n_layers):
        w.add_tensor(f"blk.{n}.attn_q.weight", np.full((32, 32), n, np.float32))
        w.add_tensor(f"blk.{n}.ffn_up.weight", np.full((16, 32), n, np.float32))
    w.add_tensor("output_norm.weight", np.ones((32,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_header_summary_of_a_written_gguf(tmp_path):
    from tiers.gguf_header import read_header_file

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, n_layers=3)
    s = mf.header_summary(read_header_file(str(path)))
    assert (s.architecture, s.block_count, s.context_length, s.file_type) == \
        ("llama", 3, 256, "F32")
    assert [len(r) for r in s.layers] == [1, 1, 1]
    assert s.layer_bytes() == [(32 * 32 + 16 * 32) * 4] * 3
    size = path.stat().st_size
    assert all(s.tensor_data_offset <= a < b <= size for r in s.layers for a, b in r)
    # Layers do not overlap each other or the non-layer tensors.
    spans = sorted([r for rs in s.layers for r in rs] + list(s.other))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_header_summary_of_gemma(gemma_path):
    from tiers.gguf_header import read_header_file

    s = mf.header_summary(read_header_file(str(gemma_path)))
    assert s.architecture == "gemma3"
    assert s.block_count == len(s.layers) == 18
    assert s.file_type == "Q4_K_M"
    total = sum(s.layer_bytes()) + s.other_bytes()
    assert 0.9 * gemma_path.stat().st_size < total <= gemma_path.stat().st_size
