"""The engine's interface: what a handler asks for and what comes back.

Handlers build a `GenerationRequest`, hand it to `Engine.generate`, and iterate the
`TokenEvent`s it yields. The engine behind this interface (a serial loop today, a
continuous-batching scheduler tomorrow) can change without touching any handler, which
is why everything here is plain data with no llama.cpp types in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; defaults follow llama.cpp's server."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One completion: an already-rendered prompt and how to continue it.

    `prompt` is text (chat messages were rendered through the chat template already);
    the engine tokenizes it. `grammar` is GBNF text or None.
    """

    prompt: str
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    add_bos: bool = True


@dataclass(frozen=True)
class TokenEvent:
    """One step of a stream. The last event has `finish_reason` set and carries usage."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """What the server can say about a model as soon as its GGUF header is known."""

    name: str
    architecture: str
    n_ctx: int
    n_ctx_train: int
    chat_template: str | None
    file_type: str | None = None
    size_bytes: int = 0


class Engine(Protocol):
    """A loaded model. One engine owns one llama.cpp model and its contexts."""

    info: ModelInfo

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]: ...

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        """Stream tokens. Closing the generator early (`aclose()`, client gone) frees the
        sequence; callers close it in a `finally`, hence a generator, not an iterator."""
        ...

    async def embed(self, inputs: Sequence[str]) -> tuple[list[list[float]], int]:
        """Return one vector per input and the total prompt tokens."""
        ...

    def queue_depth(self) -> int: ...

    def close(self) -> None: ...
