"""Per-token cost of splitting a streamed chat answer (core.openai.tool_output) beside the
plain SSE token path it wraps, as a ratio. Not a test: a human runs it on a quiet machine.

    .venv/bin/python bench/chat_output.py

Three paths over the same 700 token texts: `ChunkWriter.token` alone (what every chat
stream paid before tool calls), the parser with no tools (every chat stream now: a
possible leading <think> is looked for), and the parser with tools (held-back partial
tags, call detection).
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.openai.responses import ChunkWriter  # noqa: E402
from core.openai.tool_output import OutputParser  # noqa: E402

TOKENS = [" hello", " world", ",", " this", " is", " a", " token"] * 100
WRITER = ChunkWriter("chat", "chatcmpl-bench", 0, "m")


def plain() -> None:
    for text in TOKENS:
        WRITER.token(text)


def parsed(names: frozenset[str] | None) -> None:
    parser = OutputParser(names)
    for text in TOKENS:
        for piece in parser.feed(text):
            WRITER.delta(piece)
    for piece in parser.finish():
        WRITER.delta(piece)


def per_token_us(fn: object) -> float:
    best = min(timeit.repeat(fn, number=50, repeat=7))  # type: ignore[arg-type]
    return best / 50 / len(TOKENS) * 1e6


if __name__ == "__main__":
    base = per_token_us(plain)
    print(f"ChunkWriter.token alone: {base:.2f} us/token")
    for label, names in (("parser, no tools", None), ("parser, tools", frozenset({"f"}))):
        cost = per_token_us(lambda names=names: parsed(names))
        print(f"{label}: {cost:.2f} us/token ({cost / base:.1f}x)")
