"""Run in a fresh process: strato's engine picks its llama.cpp build, loads a GGUF and
decodes greedily; one JSON line says which build, from where, and what it produced.

A separate process because the choice is made once per process, at the first import of
llama_cpp; tests/test_cpu_variant.py runs it natively and under `qemu-x86_64 -cpu Haswell`.

Usage: python -m tests.cpu_variant_probe MODEL.gguf [MAX_TOKENS]
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path


def mapped(name: str) -> list[str]:
    """Paths of the mapped files whose name contains `name` (from /proc/self/maps)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in lines if name in line.rsplit("/", 1)[-1]})


async def decode(model: str, max_tokens: int) -> dict:
    from core.config import Settings
    from core.engine import cpu_variant
    from core.engine.llama import LlamaEngine, ll
    from core.engine.protocol import GenerationRequest, SamplingParams

    engine = LlamaEngine.load(model, name="probe",
                              settings=Settings(threads=2, ctx=128, parallel=1))
    try:
        request = GenerationRequest(prompt="The capital of France is", max_tokens=max_tokens,
                                    sampling=SamplingParams(temperature=0))
        events = [ev async for ev in engine.submit(request)]
    finally:
        engine.close()
    return {
        "variant": cpu_variant.CHOICE.variant,
        "reason": cpu_variant.CHOICE.reason,
        "libllama": mapped("libllama.so"),
        "libggml_cpu": mapped("libggml-cpu.so"),
        "system_info": ll.llama_print_system_info().decode(),
        "text": "".join(e.text for e in events),
        "completion_tokens": events[-1].completion_tokens,
    }


if __name__ == "__main__":
    tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(json.dumps(asyncio.run(decode(sys.argv[1], tokens))))
