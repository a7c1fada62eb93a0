"""Run in a fresh process: load a GGUF's vocabulary (vocab_only) through the llama.cpp
build strato picks (core/engine/cpu_variant.py, STRATO_CPU_VARIANT) and print, as JSON,
the lines of llama.cpp's metadata dump ("- kv N: key type = value", one per key) and its
vocabulary lines (special and end-of-generation tokens: "load: ...", "print_info: ...").

A separate process because the build is chosen once per process, at the first import of
llama_cpp, and because strato's own log callback drops llama.cpp's INFO lines.

Usage: python -m tests.llama_log_probe MODEL.gguf
"""

from __future__ import annotations

import ctypes
import json
import sys


def log_lines(model: str) -> dict[str, list[str]]:
    from core.engine import cpu_variant  # noqa: F401  (sets LLAMA_CPP_LIB_PATH)
    from core.engine.llama import ll

    lines: list[str] = []

    @ll.llama_log_callback
    def keep(_level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    ll.llama_log_set(keep, ctypes.c_void_p(0))
    ll.llama_backend_init()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    handle = ll.llama_model_load_from_file(model.encode(), params)
    if not handle:
        sys.exit(f"llama.cpp could not load {model}")
    ll.llama_model_free(handle)
    text = "".join(lines).splitlines()
    return {"kv": [line for line in text if "- kv " in line],
            "vocab": [line for line in text if line.startswith("load:")
                      or line.startswith("print_info:") and "token" in line]}


if __name__ == "__main__":
    print(json.dumps(log_lines(sys.argv[1])))
