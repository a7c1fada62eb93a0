"""A Gemma-3-4B-shaped Q4_K GGUF with random weights, for load benchmarks (~2.4 GB).

Load and decode cost depend on shapes and types, not on values: the tokenizer and every
metadata key come from the bundled Gemma 3 270M file (so llama.cpp builds the same
262k-token vocabulary), the hyperparameters and tensor shapes are Gemma 3 4B's (34
blocks, 2560 wide, 10240 feed-forward, 8 query / 4 KV heads of 256), the linear weights
are random Q4_K blocks, the embedding Q6_K (as in Q4_K_M files), the norms F32 ones.
Every block scale is a small finite half float, so activations stay finite.

    .venv/bin/python bench/synthetic_gguf.py OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SHAPE = {"embedding_length": 2560, "block_count": 34, "feed_forward_length": 10240,
         "attention.head_count": 8, "attention.head_count_kv": 4,
         "attention.key_length": 256, "attention.value_length": 256,
         "context_length": 131072, "attention.sliding_window": 1024}
VERSION = "1"    # bump when the file's contents change (cached copies are rebuilt)


def _quantized(rng: np.random.Generator, rows: int, cols: int, kind: str) -> np.ndarray:
    """Random blocks of `kind` (Q4_K: 144 bytes / 256 weights, Q6_K: 210), scales set."""
    per_block = {"Q4_K": 144, "Q6_K": 210}[kind]
    blocks = rows * cols // 256
    data = np.frombuffer(rng.bytes(blocks * per_block), dtype=np.uint8).copy()
    data = data.reshape(blocks, per_block)
    half = np.frombuffer(np.float16(1e-4).tobytes(), dtype=np.uint8)
    if kind == "Q4_K":
        data[:, 0:2] = half            # d
        data[:, 2:4] = half            # dmin
    else:
        data[:, 208:210] = half        # d (after ql, qh and the int8 scales)
    return data.reshape(rows, cols // 256 * per_block)


def write(source: Path, out: Path, seed: int = 0) -> Path:
    """Write the model to `out` (via a temporary name; returns `out`)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = "gemma3"
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    skip = {"general.architecture", "general.file_type", "general.name"}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in skip:
            continue
        short = name.removeprefix(f"{arch}.")
        value = SHAPE.get(short, field.contents()) if name.startswith(f"{arch}.") \
            else field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub)
    writer.add_name("Gemma-3-4B-shaped (random weights)")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)

    n_vocab = int(next(t.shape[1] for t in reader.tensors if t.name == "token_embd.weight"))
    d, ff = SHAPE["embedding_length"], SHAPE["feed_forward_length"]
    hd = SHAPE["attention.key_length"]
    q, kv = SHAPE["attention.head_count"] * hd, SHAPE["attention.head_count_kv"] * hd
    tensors: list[tuple[str, tuple[int, int] | int, str]] = [("token_embd.weight",
                                                              (n_vocab, d), "Q6_K")]
    for i in range(SHAPE["block_count"]):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", d, "F32"), (b + "attn_q.weight", (q, d), "Q4_K"),
                    (b + "attn_k.weight", (kv, d), "Q4_K"),
                    (b + "attn_v.weight", (kv, d), "Q4_K"),
                    (b + "attn_q_norm.weight", hd, "F32"), (b + "attn_k_norm.weight", hd, "F32"),
                    (b + "attn_output.weight", (d, q), "Q4_K"),
                    (b + "post_attention_norm.weight", d, "F32"),
                    (b + "ffn_norm.weight", d, "F32"), (b + "ffn_gate.weight", (ff, d), "Q4_K"),
                    (b + "ffn_up.weight", (ff, d), "Q4_K"),
                    (b + "ffn_down.weight", (d, ff), "Q4_K"),
                    (b + "post_ffw_norm.weight", d, "F32")]
    tensors.append(("output_norm.weight", d, "F32"))

    rng = np.random.default_rng(seed)

    def data(shape: tuple[int, int] | int, kind: str) -> np.ndarray:
        if kind == "F32":
            return np.ones(shape, dtype=np.float32)
        rows, cols = shape  # type: ignore[misc]
        return _quantized(rng, rows, cols, kind)

    for name, shape, kind in tensors:
        if kind == "F32":
            writer.add_tensor_info(name, (shape,), np.dtype(np.float32), shape * 4)
        else:
            rows, cols = shape  # type: ignore[misc]
            per_block = {"Q4_K": 144, "Q6_K": 210}[kind]
            nbytes = rows * cols // 256 * per_block
            writer.add_tensor_info(name, (rows, cols // 256 * per_block), np.dtype(np.uint8),
                                   nbytes, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, shape, kind in tensors:
        writer.write_tensor_data(data(shape, kind))
    writer.close()
    tmp.rename(out)
    return out


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from core.catalog.bundled import default_model_path

    out = Path(sys.argv[1])
    write(default_model_path(), out)
    print(f"{out}: {out.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
